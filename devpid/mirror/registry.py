"""Every mirror index of the private data, each a ``MirrorIndex`` with its own cache and poller.

``root/pypi`` is one mirror index among any others users create
(``type=mirror``). The registry follows the index configurations: a new
mirror index gets its ``MirrorIndex`` (and its changelog poller) on the first
request after any worker created it; a changed ``mirror_url`` or
``mirror_cache_expiry`` builds it anew; a deleted one is dropped. The routes
read it as a mapping ``"user/index" -> MirrorIndex``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.config import shown_url
from devpid.mirror.index import MirrorIndex

#: The configuration keys a running MirrorIndex is built from.
_BUILT_FROM = ("mirror_url", "mirror_cache_expiry")


def _fingerprint(config: Mapping[str, Any]) -> str:
    return json.dumps({k: config.get(k) for k in _BUILT_FROM}, sort_keys=True, default=str)


@attrs.define(slots=False)
class MirrorRegistry(Mapping[str, MirrorIndex]):
    #: Makes the MirrorIndex of a mirror index from its name and configuration.
    build: Callable[[str, Mapping[str, Any]], MirrorIndex]
    #: Told of each MirrorIndex added (to start its poller) and removed (to stop it);
    #: ``removed`` also says whether the index is gone (else it is being rebuilt).
    added: Callable[[MirrorIndex], None] = lambda mirror: None
    removed: Callable[[MirrorIndex, bool], None] = lambda mirror, gone: None
    _mirrors: dict[str, tuple[str, MirrorIndex]] = attrs.field(factory=dict)
    log = Logger()

    def sync(self, configs: Mapping[str, Mapping[str, Any]]) -> None:
        """Follow ``configs`` (every mirror index's configuration, by name)."""
        for name in list(self._mirrors):
            if name not in configs:
                _, mirror = self._mirrors.pop(name)
                self.removed(mirror, True)
                self.log.info("mirror index {name} removed", name=name)
        for name, config in configs.items():
            fingerprint = _fingerprint(config)
            known = self._mirrors.get(name)
            if known is not None and known[0] == fingerprint:
                continue
            if known is not None:
                self.removed(known[1], False)
                del self._mirrors[name]
            try:
                mirror = self.build(name, config)
            except Exception:
                self.log.failure("mirror index {name} cannot be served", name=name)
                continue
            self._mirrors[name] = (fingerprint, mirror)
            self.added(mirror)
            self.log.info(
                "mirror index {name} mirrors {url}",
                name=name,
                url=shown_url(mirror.upstream.simple_url),
            )

    def __getitem__(self, name: str) -> MirrorIndex:
        return self._mirrors[name][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mirrors)

    def __len__(self) -> int:
        return len(self._mirrors)

    def invalidated(self, message: dict[str, Any]) -> None:
        """A message from another process: each mirror takes what names it."""
        for _, mirror in self._mirrors.values():
            mirror.invalidated(message)

    def forget_memory(self) -> None:
        for _, mirror in self._mirrors.values():
            mirror.forget_memory()
