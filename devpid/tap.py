"""``twistd devpid``: command-line options and the service tree they build."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import treq.client
from twisted.application.service import MultiService
from twisted.copyright import version as twisted_version
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent

from devpid import __version__
from devpid.auth.acl import Policy
from devpid.auth.authenticate import Authenticator
from devpid.auth.lockdown import Lockdown
from devpid.auth.passwords import PasswordChecker
from devpid.auth.remembered import RememberedPrincipals
from devpid.auth.secret import SecretFileError, load_or_create_secret
from devpid.auth.throttle import FailedLogins
from devpid.auth.tokens import LoginTokens
from devpid.common.gctune import GcTuning
from devpid.common.identity import ProcessIdentity
from devpid.common.logwriter import BatchedLogs
from devpid.common.pool import QuietPool
from devpid.common.stats import Stats
from devpid.common.turns import ReactorTurns
from devpid.config import (
    DEFAULTS,
    ConfigError,
    Settings,
    build_settings,
    read_ini,
    remember_upstream,
    shown_url,
)
from devpid.files.eviction import CacheLimit
from devpid.files.evictor import EvictionService
from devpid.files.releases import ReleaseFiles, Unlinked
from devpid.files.store import FileStore
from devpid.files.usage import FLUSH_INTERVAL
from devpid.http.app import DevpidRoutes, PrivateApi, WebParts
from devpid.http.limits import Limits
from devpid.http.site import DevpidSite
from devpid.http.uploads import UploadReceiver
from devpid.mirror.index import MirrorIndex
from devpid.mirror.listjobs import ProcessJobs
from devpid.mirror.poller import ChangelogPoller
from devpid.mirror.registry import MirrorRegistry
from devpid.mirror.tee import DownloadManager
from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.upstream import UpstreamClient
from devpid.ops.history import HistorySampler, StatusHistory
from devpid.ops.metrics import Metrics
from devpid.ops.status import PrivateStatus, StatusReport
from devpid.private.data import PrivateData
from devpid.private.database import DatabaseError
from devpid.private.events import Event
from devpid.private.releases import Releases, doc_hashes
from devpid.private_service import (
    PrivateDataService,
    RootPasswordWatch,
    listens_beyond_loopback,
    open_private_data,
)
from devpid.replica.readonly import ReplicaUploads
from devpid.replica.setup import (
    ReplicaParts,
    ReplicaSetupError,
    for_primary,
    for_replica,
    load_secret,
    open_replica_data,
    promote_if_replica,
)
from devpid.routes.access import Access
from devpid.search import QueryError, SearchCatalog
from devpid.service import CacheService, ListenerService
from devpid.store import StateStore
from devpid.store.embedded import EmbeddedStore
from devpid.upload.form import FormLimits
from devpid.web.searchpage import SearchAnswers
from devpid.web.statuspage import StatusPageData
from devpid.webhooks.queue import RetryPolicy, WebhookQueue
from devpid.webhooks.service import WebhookService, make_webhook_service

MIRROR_INDEX = "root/pypi"
_log = Logger()

#: devpi-server's options that devpid spells differently: what to say instead.
#: ``{value}`` is the value given with the option, else the placeholder beside it.
DEVPI_SERVER_OPTIONS = {
    "--port": ("devpid's is --listen tcp:{value}", "N"),
    "--host": ("devpid's is --listen tcp:PORT:interface={value}", "HOST"),
    "--offline-mode": ("devpid's is --offline", ""),
    "--init": ("not needed: devpid prepares an empty --serverdir at start", ""),
}


def _help(name: str) -> str:
    default, text = DEFAULTS[name]
    return f"{text} [default: {default}]" if default is not None and default is not False else text


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run devpid, a PyPI caching proxy. Every option can also be set in the "
        "[devpid] section of an INI file given with --config (a commented example "
        "is etc/devpid.ini in devpid's source; it is not installed); the command "
        "line wins. Subcommands of the devpid command: 'devpid gen-config' writes "
        "configuration files, 'devpid fsck' verifies the cached files (each has --help)."
    )
    optParameters = [
        [name, None, None, _help(name)]
        for name, (default, _) in DEFAULTS.items()
        if not isinstance(default, bool)
    ] + [["config", "c", None, "an INI file with a [devpid] section using the same keys"]]
    optFlags = [
        ["offline", None, _help("offline")],
        ["require-auth", None, _help("require-auth")],
    ]

    def opt_version(self) -> None:
        """Print devpid's version and Twisted's, and exit."""
        print(f"devpid {__version__} (Twisted {twisted_version})")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        _refuse_devpi_server_options(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd devpid: error: {e} (see: twistd devpid --help)") from None


def _refuse_devpi_server_options(argv: list[str]) -> None:
    """A devpi-server option gets one line naming devpid's equivalent, and exit status 2."""
    for position, arg in enumerate(argv):
        if arg == "--":
            return
        name, equals, value = arg.partition("=")
        if name not in DEVPI_SERVER_OPTIONS:
            continue
        if not equals:
            following = argv[position + 1 : position + 2]
            value = following[0] if following and not following[0].startswith("-") else ""
        template, placeholder = DEVPI_SERVER_OPTIONS[name]
        if not placeholder:
            value = ""
        hint = template.format(value=value or placeholder)
        print(f"twistd devpid: error: {name} is devpi-server's option; {hint}", file=sys.stderr)
        raise SystemExit(2)


def settings_from_options(options: Options | dict[str, Any]) -> Settings:
    given = {name: options.get(name) for name in DEFAULTS}
    given["offline"] = bool(options.get("offline")) or None
    given["require-auth"] = bool(options.get("require-auth")) or None
    ini = read_ini(options["config"]) if options.get("config") else None
    return build_settings(given, ini)


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def _is_own_address(upstream: str, listen: str) -> bool:
    """Whether the upstream URL points at the local port devpid listens on."""
    match = re.match(r"^(?:tcp6?|reuseport):(?:port=)?(\d+)", listen)
    if match is None:
        return False
    parts = urlsplit(upstream)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname in _LOCAL_HOSTS and port == int(match.group(1))


def _webhook_status(webhooks: WebhookService) -> PrivateStatus:
    return PrivateStatus({"webhooks": webhooks.status()})


def _doc_hashes_of(data: PrivateData, stage: str, project: str) -> dict[str, str]:
    return doc_hashes(data.versions(stage, project))


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> MultiService:
    from twisted.internet import reactor as global_reactor

    if reactor is None:
        reactor = global_reactor
    try:
        settings = settings_from_options(options)
        if settings.listen.isdigit():
            raise ConfigError(
                f"--listen {settings.listen!r} is not an endpoint: "
                f"did you mean tcp:{settings.listen}?"
            )
        try:
            endpoint = serverFromString(reactor, settings.listen)
        except Exception as e:  # endpoint parsers raise many kinds (a missing key file, ...)
            raise ConfigError(f"--listen {settings.listen!r} is not usable: {e}") from None
        if _is_own_address(settings.upstream, settings.listen):
            raise ConfigError(
                f"--upstream {shown_url(settings.upstream)} is devpid's own --listen address "
                f"({settings.upstream_origin.brief()}); give the real index with --upstream"
            )
        if settings.primary_url is not None and _is_own_address(
            settings.primary_url, settings.listen
        ):
            raise ConfigError(
                f"--primary-url {shown_url(settings.primary_url)} is devpid's own --listen "
                "address; give the primary's URL"
            )
        created = not settings.serverdir.exists()
        try:
            settings.serverdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot create --serverdir {settings.serverdir}: {e.strerror}"
            ) from None
        if created:
            _log.info("created serverdir {path}", path=str(settings.serverdir))
        check_writable(settings.serverdir)
        # Only a file write: a start that fails has still sent nothing upstream.
        remember_upstream(settings)
    except ConfigError as e:
        raise SystemExit(f"twistd devpid: error: {e}") from None
    return build_service(settings, reactor, endpoint, real_reactor=reactor is global_reactor)


def _inline(function: Any) -> Any:
    """Runs ``function`` at once: the offload of a test's memory reactor (no threads)."""
    return maybeDeferred(function)


def _mirror_settings(settings: Settings, name: str, config: Mapping[str, Any]) -> tuple[str, float]:
    """A mirror index's upstream and cache expiry. ``root/pypi`` takes --upstream and
    --cache-expiry when they are given for this run (on the command line or the INI
    file), its stored configuration otherwise."""
    url = str(config.get("mirror_url") or settings.upstream)
    expiry = config.get("mirror_cache_expiry", settings.cache_expiry)
    if name == MIRROR_INDEX:
        if settings.upstream_origin.kind == "option":
            url = settings.upstream
        if "cache-expiry" in settings.given:
            expiry = settings.cache_expiry
    if not url.endswith("/"):
        url += "/"
    return url, float(expiry)


def check_writable(serverdir: Any) -> None:
    """Raise ConfigError unless a file can be created in ``serverdir`` (root included)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".devpid-probe-", dir=serverdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--serverdir {serverdir} is not writable: {e.strerror}") from None


def build_service(
    settings: Settings, reactor: Any, endpoint: Any, real_reactor: bool = False
) -> MultiService:
    stats = Stats()
    identity = ProcessIdentity()
    files = FileStore(settings.serverdir, identity)
    store: StateStore
    peers = None
    if settings.redis is not None:
        # txredisapi imports the global reactor: only load it when Redis is asked for.
        from devpid.store.redis import RedisStore

        store = RedisStore(settings.redis, settings.redis_prefix, reactor)
        # With Redis, other processes may share the serverdir: one download per file.
        peers = SharedDownloads(store, files, identity, settings.lock_ttl)
    else:
        store = EmbeddedStore(settings.serverdir / "state.sqlite", reactor)
    pool = QuietPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    agent = Agent(reactor, connectTimeout=settings.upstream_timeout, pool=pool)
    via = f"1.1 devpid-{uuid.uuid4().hex[:12]}"
    upstream = UpstreamClient(
        settings.upstream,
        treq.client.HTTPClient(agent),
        reactor,
        settings.upstream_timeout,
        via=via,
    )
    downloads = DownloadManager(
        files, upstream, reactor, settings.upstream_timeout, stats, peers=peers
    )
    if real_reactor:  # not a test's memory reactor: it has a thread pool
        offload: Any = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    else:
        offload = _inline
    try:
        data_path = settings.serverdir / "private.sqlite"
        if settings.primary_url is None:
            promote_if_replica(data_path)
            data = open_private_data(data_path, int(settings.cache_expiry), settings.upstream)
        else:
            data = open_replica_data(data_path, int(settings.cache_expiry), settings.primary_url)
        secret = load_or_create_secret(settings.secret_path)
        replication_secret = load_secret(settings.replication_secret_file)
    except (DatabaseError, SecretFileError, ReplicaSetupError) as e:
        raise SystemExit(f"twistd devpid: error: {e}") from None
    pollers = MultiService()
    pollers.setName("pollers")
    running_pollers: dict[str, Any] = {}

    def make_mirror(name: str, config: Mapping[str, Any]) -> MirrorIndex:
        url, expiry = _mirror_settings(settings, name, config)
        client = upstream
        if url != upstream.simple_url:
            client = UpstreamClient(url, upstream.http, reactor, settings.upstream_timeout, via=via)
        mirror = MirrorIndex(
            name,
            client,
            store,
            files,
            reactor,
            stats,
            cache_expiry=expiry,
            offline=settings.offline,
        )
        if real_reactor:
            mirror.offload = offload
            mirror.jobs = ProcessJobs(reactor)  # the project list's heavy work, in a child
        return mirror

    def start_poller(mirror: MirrorIndex) -> None:
        if settings.offline or settings.changelog_interval <= 0:
            return
        poller = ChangelogPoller(
            mirror,
            mirror.upstream,
            store,
            reactor,
            settings.changelog_interval,
            identity=identity,
        )
        service = poller.make_service()
        running_pollers[mirror.name] = (poller, service)
        service.setServiceParent(pollers)

    def mirror_removed(mirror: MirrorIndex, gone: bool) -> None:
        known = running_pollers.pop(mirror.name, None)
        if known is not None:
            known[1].disownServiceParent()
        mirror.forget_memory()
        if not gone and mirror.upstream.simple_url == make_url(mirror.name):
            return  # rebuilt for its cache expiry: its pages stay good
        # deleted: its pages and files go; another upstream: its pages are refetched
        for trash in files.detach_index(mirror.name, files_too=gone):
            if real_reactor:
                reactor.callInThread(shutil.rmtree, trash, True)
            else:
                shutil.rmtree(trash, True)

    def make_url(name: str) -> str:
        config = data.index(name) or {}
        return _mirror_settings(settings, name, config)[0]

    mirrors = MirrorRegistry(make_mirror, start_poller, mirror_removed)
    mirrors.sync(data.mirrors())

    def is_linked(path: str) -> bool:
        data.catch_up()
        return data.version_of_file(path) is not None

    release_files = ReleaseFiles(files, is_linked)

    def follow_indexes(event: Event) -> None:
        changed = [change for change in event.changes if change.kind == "index"]
        if not changed:
            return
        stages_gone = [c.name for c in changed if c.value is None and c.name not in mirrors]
        mirrors.sync(data.mirrors())
        for name in stages_gone:  # a deleted stage's files and docs go
            for trash in release_files.detach_stage(name):
                if real_reactor:
                    reactor.callInThread(shutil.rmtree, trash, True)
                else:
                    shutil.rmtree(trash, True)

    data.database.listeners.append(follow_indexes)
    root_password = RootPasswordWatch(data, listens_beyond_loopback(settings.listen))
    root_password.check()
    data.database.listeners.append(root_password.heard)
    passwords = PasswordChecker(offload, reactor)
    login_tokens = LoginTokens(secret, reactor)
    authenticator = Authenticator(data, login_tokens, passwords, FailedLogins(reactor), reactor)
    policy = Policy(restrict_modify=settings.restrict_modify, require_auth=settings.require_auth)
    remembered = RememberedPrincipals(lambda: reactor.seconds(), lambda: data.serial)
    access = Access(authenticator, policy, Lockdown(policy, data), remembered)
    releases = Releases(data.database)
    private = PrivateApi(data, access, passwords, login_tokens, releases, release_files, offload)
    main_poller = running_pollers.get(MIRROR_INDEX)
    poller = main_poller[0] if main_poller is not None else None
    status = StatusReport(
        files,
        store,
        stats,
        downloads,
        settings.upstream,
        upstream.health,
        settings.offline,
        settings.listen,
        poller=poller,
        peers=peers,
        identity=identity,
        private=root_password.status,
    )

    def mirror_names() -> list[str]:
        data.catch_up()
        return list(data.mirrors())

    status.mirrors = mirror_names
    evictor = None
    if settings.cache_max_size is not None:
        evictor = EvictionService(
            files,
            CacheLimit(settings.cache_max_size, settings.evict_grace),
            mirror_names,
            reactor,
            offload,
            interval=settings.evict_interval,
            flush_interval=min(FLUSH_INTERVAL, settings.evict_interval),
        )
        status.eviction = evictor
    metrics = Metrics(status, reactor)
    status.requests = metrics.requests
    history = StatusHistory(status)
    catalog = SearchCatalog(data, mirrors, offload, reactor)
    web = WebParts(
        secret,
        StatusPageData(status, history, reactor, catalog.status),
        SearchAnswers(catalog, QueryError),
    )
    if settings.primary_url is None:
        replication = for_primary(data, release_files, reactor, offload, replication_secret)
    else:
        assert replication_secret is not None  # settings require it
        replica_parts = ReplicaParts(
            data,
            release_files,
            stats,
            peers,
            reactor,
            offload,
            settings.upstream_timeout,
            via,
            sweep=lambda: sweep_stage_files(),
        )
        replication = for_replica(replica_parts, settings.primary_url, replication_secret)
    status.replica = replication.status
    webhooks: WebhookService | None = None
    if settings.primary_url is None:  # a replica's primary sends its webhooks
        webhooks = make_webhook_service(
            data.database,
            WebhookQueue.in_serverdir(settings.serverdir),
            reactor,
            settings.webhook_timeout,
            RetryPolicy(settings.webhook_retry_for, settings.webhook_backoff_max),
        )
        status.webhooks = partial(_webhook_status, webhooks)
    routes = DevpidRoutes(
        mirrors,
        downloads,
        files,
        stats,
        status,
        settings.outside_url,
        metrics,
        private,
        web,
        replication=replication,
    )
    limits = Limits(
        max_header_size=settings.max_header_size,
        max_url_length=settings.max_url_length,
        max_body_size=settings.max_body_size,
        max_connections_per_client=settings.max_connections_per_client,
        idle_timeout=settings.idle_timeout,
    )
    site = DevpidSite(routes.resource(), stats, via=via.encode(), limits=limits, reactor=reactor)
    site.noisy = False
    site.uploads = (UploadReceiver if settings.primary_url is None else ReplicaUploads)(
        FormLimits(max_file_size=settings.max_upload_size),
        release_files.create_upload_file,
        lambda: (data.catch_up(), data.serial)[1],
        lambda index: (data.catch_up(), data.is_stage(index))[1],
    )
    site.requests = metrics.requests

    top = MultiService()
    if real_reactor:  # process-wide: never in a test's process (docs/performance.md, p99)
        BatchedLogs(reactor).setServiceParent(top)
        gc_tuning = GcTuning(reactor)
        gc_tuning.setServiceParent(top)
        metrics.gc = gc_tuning.pauses
        # before each request, the private data is checked once per reactor turn
        data.database.turns = ReactorTurns(reactor)
    CacheService(
        files,
        store,
        stats,
        downloads,
        pool,
        reactor,
        shutdown_grace=settings.shutdown_grace,
        handle_sigterm=real_reactor,
        peers=peers,
        upstream_url=shown_url(settings.upstream),
        upstream_origin=settings.upstream_origin.describe(),
        offline=settings.offline,
        offload=offload if real_reactor else None,
    ).setServiceParent(top)

    def sweep_stage_files() -> None:
        """At start (and a replica's resync): the walk in a thread, the removals on the
        reactor (the private data is read there), while devpid already serves."""
        stages = [name for name in data.indexes() if name not in data.mirrors()]
        walked = offload(
            partial(release_files.unlinked_candidates, stages, data.database.records.files)
        )
        walked.addCallback(remove_unlinked, stages)
        walked.addErrback(lambda failure: _log.failure("could not sweep stage files", failure))

    def remove_unlinked(found: Unlinked, stages: list[str]) -> None:
        removed = release_files.remove_unlinked(found)
        for stage in stages:
            release_files.prune_all_docs(stage, partial(_doc_hashes_of, data, stage))
        if removed:
            _log.info("removed {count} files of stage indexes nothing links", count=removed)

    PrivateDataService(data, sweep_stage_files).setServiceParent(top)
    if settings.redis is not None:
        from devpid.store.redis import RedisStore, RedisSubscriber

        assert isinstance(store, RedisStore)
        # Its own connection: stale marks and refetches elsewhere reach this mirror's memory.
        RedisSubscriber(
            store, mirrors.invalidated, mirrors.forget_memory, lambda: identity.token
        ).setServiceParent(top)
    # After the store opens, before the listener; stopped before the store closes.
    pollers.setServiceParent(top)
    HistorySampler(history, reactor).setServiceParent(top)
    if evictor is not None:  # after the CacheService counted the serverdir
        evictor.setServiceParent(top)
    if replication.service is not None:  # a replica's follower
        replication.service.setServiceParent(top)
    if webhooks is not None:  # stopped after the listener, before the private data closes
        webhooks.setServiceParent(top)
    listener = ListenerService(settings.listen, endpoint, site, reactor)
    listener.setServiceParent(top)
    status.listener = listener  # /+status shows the address it got (the real port of tcp:0)
    return top
