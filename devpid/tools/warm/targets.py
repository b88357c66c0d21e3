"""The targets ``devpid warm`` resolves for: platform, Python version, ABI, implementation.

A target is what pip calls a distribution restriction: ``--platform``,
``--python-version``, ``--abi`` and ``--implementation``. Each target gets one
resolution, with ``--only-binary=:all:`` (pip refuses sdists for a machine it is not).

Two ways to name them on the command line:

* ``--target platform=manylinux2014_x86_64,python=3.12[,abi=cp312][,implementation=cp]``,
  repeatable, one target each. A key given twice in one target (``platform=a,platform=b``)
  gives pip both values: one resolution that accepts either.
* pip's own ``--platform``, ``--python-version``, ``--abi`` and ``--implementation``:
  one target per pair of ``--platform`` and ``--python-version`` values (each may be
  repeated), every one with all the ``--abi`` and the ``--implementation`` given.

With neither, one target: this interpreter, as pip sees it (sdists allowed).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import attrs

#: The ``--target`` keys, and pip's option for each.
TARGET_KEYS = {
    "platform": "--platform",
    "python": "--python-version",
    "abi": "--abi",
    "implementation": "--implementation",
}
_VALUE = re.compile(r"[A-Za-z0-9_.]+")


class TargetError(ValueError):
    """A target that cannot be understood, with the reason."""


@attrs.frozen
class Target:
    """One resolution's restrictions; all empty means this interpreter."""

    platforms: tuple[str, ...] = ()
    python_version: str | None = None
    abis: tuple[str, ...] = ()
    implementation: str | None = None

    @property
    def is_native(self) -> bool:
        return not (self.platforms or self.python_version or self.abis or self.implementation)

    def label(self) -> str:
        """``platform=...,python=...``: how the summary names this target."""
        if self.is_native:
            return "this interpreter"
        parts = [f"platform={p}" for p in self.platforms]
        if self.python_version is not None:
            parts.append(f"python={self.python_version}")
        parts += [f"abi={a}" for a in self.abis]
        if self.implementation is not None:
            parts.append(f"implementation={self.implementation}")
        return ",".join(parts)

    def pip_options(self) -> list[str]:
        """pip's options for this target (none for this interpreter)."""
        if self.is_native:
            return []
        options = ["--only-binary=:all:"]
        for platform in self.platforms:
            options += ["--platform", platform]
        if self.python_version is not None:
            options += ["--python-version", self.python_version]
        for abi in self.abis:
            options += ["--abi", abi]
        if self.implementation is not None:
            options += ["--implementation", self.implementation]
        return options


def parse_target(spec: str) -> Target:
    """``platform=P,python=V,abi=A,implementation=I`` (any subset, keys repeatable
    except python and implementation) into a Target."""
    values: dict[str, list[str]] = {key: [] for key in TARGET_KEYS}
    for part in spec.split(","):
        key, equals, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not equals or key not in TARGET_KEYS:
            known = ", ".join(TARGET_KEYS)
            raise TargetError(
                f"target {spec!r}: {part.strip()!r} is not KEY=VALUE with KEY one of {known}"
            )
        if not _VALUE.fullmatch(value):
            raise TargetError(f"target {spec!r}: bad value {value!r} for {key}")
        values[key].append(value)
    for key in ("python", "implementation"):
        if len(values[key]) > 1:
            raise TargetError(f"target {spec!r}: {key} given twice")
    target = Target(
        platforms=tuple(values["platform"]),
        python_version=values["python"][0] if values["python"] else None,
        abis=tuple(values["abi"]),
        implementation=values["implementation"][0] if values["implementation"] else None,
    )
    if target.is_native:
        raise TargetError(f"target {spec!r} is empty")
    return target


def targets_from(
    specs: Sequence[str],
    platforms: Sequence[str] = (),
    python_versions: Sequence[str] = (),
    abis: Sequence[str] = (),
    implementation: str | None = None,
) -> list[Target]:
    """Every target the options name, duplicates dropped, in order; [native] for none."""
    targets = [parse_target(spec) for spec in specs]
    for value in (
        *platforms,
        *python_versions,
        *abis,
        *([implementation] if implementation else []),
    ):
        if not _VALUE.fullmatch(value):
            raise TargetError(f"bad platform, Python version, ABI or implementation {value!r}")
    if platforms or python_versions or abis or implementation:
        no_value: list[str | None] = [None]
        for platform, python in itertools.product(
            [*platforms] or no_value, [*python_versions] or no_value
        ):
            targets.append(
                Target(
                    platforms=(platform,) if platform is not None else (),
                    python_version=python,
                    abis=tuple(abis),
                    implementation=implementation,
                )
            )
    unique = list(dict.fromkeys(targets))
    return unique or [Target()]
