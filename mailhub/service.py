"""Service composition: one MultiService holding every listener and background service.

``build_service(cfg)`` makes the shared pieces once (directory, store, events, portal, TLS
options, MDA, outbound queue) in a ServerContext, then asks each protocol package for a
factory per listener (PROTOCOLS maps a listener name to ``module:function``; the function
takes ``(ctx, listener_name)`` and returns a protocol factory). Implicit-TLS listeners
(submissions, pop3s, imaps) get the factory wrapped in TLS here. Listening happens in
``privilegedStartService`` so twistd can bind ports below 1024 as root before ``--uid``.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import endpoints, reactor as default_reactor
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailhub.auth import AuthThrottle, build_portal
from mailhub.runfile import listeners_path
from mailhub.config import LISTENER_NAMES, Config
from mailhub.directory import open_directory
from mailhub.mda import DeliveryAgent
from mailhub.ownership import give_to_data_dir_owner
from mailhub.store import MailboxEvents, MailStore
from mailhub.tls import ReloadingServerTLS, certificate_paths

log = Logger(namespace="mailhub")

IMPLICIT_TLS = {"submissions", "pop3s", "imaps"}

# listener name -> "module:function(ctx, name) -> IProtocolFactory"
PROTOCOLS: dict[str, str] = {
    "mx": "mailhub.smtpserver.factory:build_factory",
    "submission": "mailhub.smtpserver.factory:build_factory",
    "submissions": "mailhub.smtpserver.factory:build_factory",
    "pop3": "mailhub.pop3server.factory:build_factory",
    "pop3s": "mailhub.pop3server.factory:build_factory",
    "imap": "mailhub.imapserver.factory:build_factory",
    "imaps": "mailhub.imapserver.factory:build_factory",
}

# background services: "module:function(ctx) -> IService or None", built before the
# listeners (the outbound queue sets ctx.queue here, so submission can hand mail to it)
BACKGROUND: list[str] = [
    "mailhub.queue.service:build_queue_service",
]


class StartupError(SystemExit):
    """Raised (and shown as one line by twistd) when the server cannot start."""

    def __init__(self, message: str):
        super().__init__(f"mailhub: {message}")
        self.message = message


@dataclass
class ServerContext:
    """Everything the protocol packages share; built once per server."""

    cfg: Config
    reactor: Any
    directory: Any
    store: MailStore
    events: MailboxEvents
    portal: Any
    realm: Any
    mda: DeliveryAgent
    tls_options: Any
    throttle: AuthThrottle
    queue: Any = None  # IOutboundQueue once the outbound service is built
    extras: dict = field(default_factory=dict)


def build_context(cfg: Config, reactor=None) -> ServerContext:
    reactor = reactor or default_reactor
    data = cfg.data_dir
    (data / "mail").mkdir(parents=True, exist_ok=True)
    directory = open_directory(data)
    events = MailboxEvents()
    store = MailStore(data / "mail", events=events)
    store.enable_tmp_pool()
    portal, realm = build_portal(store, directory)
    cert, key, generated = certificate_paths(cfg)
    if generated:
        log.info("generated a self-signed TLS certificate at {cert} (set [tls] certificate and "
                 "private_key for a real one)", cert=str(cert))
    tls_options = ReloadingServerTLS(cert, key, log=log)
    ctx = ServerContext(
        cfg=cfg, reactor=reactor, directory=directory, store=store, events=events,
        portal=portal, realm=realm, mda=DeliveryAgent(store, directory),
        tls_options=tls_options, throttle=AuthThrottle(base_delay=cfg["smtp"]["auth_failure_delay"]),
    )
    return ctx


def _load(ref: str):
    """The function named by "module:function"; None if that module is not in this build."""
    module, _, func = ref.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return None
        raise
    return getattr(mod, func)


class ListenerService(service.Service):
    """Listens on one endpoint string for one named listener; clear error when it cannot."""

    def __init__(self, reactor, listener: str, description: str, factory):
        self.reactor = reactor
        self.listener = listener
        self.description = description
        self.factory = factory
        self.port = None
        self.setName(f"{listener}:{description}")

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self):
        service.Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self):
        try:
            ep = endpoints.serverFromString(self.reactor, self.description)
        except (ValueError, TypeError, KeyError) as e:
            raise StartupError(f"listen.{self.listener}: invalid endpoint {self.description!r}: {e}")
        result = []
        d = ep.listen(self.factory)
        d.addBoth(result.append)
        if not result:
            raise StartupError(f"listen.{self.listener}: {self.description!r} did not bind at once")
        outcome = result[0]
        if hasattr(outcome, "check"):  # a Failure
            err = outcome.value
            if isinstance(err, CannotListenError):
                reason = getattr(err.socketError, "strerror", None) or str(err.socketError)
                raise StartupError(
                    f"cannot start listener {self.listener} on {self.description}: port "
                    f"{err.port} ({err.interface or 'all interfaces'}): {reason}"
                )
            raise StartupError(f"cannot start listener {self.listener} on {self.description}: {err}")
        self.port = outcome
        addr = self.port.getHost()
        log.info("listening: {listener} on {host}:{port}{tls}", listener=self.listener,
                 host=getattr(addr, "host", "?"), port=getattr(addr, "port", "?"),
                 tls=" (implicit TLS)" if self.listener in IMPLICIT_TLS else "")

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def freeze_startup_heap() -> None:
    """Collect once, then move everything alive at start-up (modules, Twisted, config: it
    lives as long as the process) out of the cyclic GC's reach (``gc.freeze``). Otherwise the
    first full collection after a start walks that whole heap (~15-20 ms here) inside
    whichever client request crosses the threshold: it was seen as a 20 ms IMAP FETCH right
    after a restart, where 2 ms is usual."""
    gc.collect()
    gc.freeze()


class MailhubService(service.MultiService):
    def __init__(self, ctx: ServerContext):
        super().__init__()
        self.ctx = ctx

    def privilegedStartService(self):
        super().privilegedStartService()
        # Started as root to bind low ports (twistd --uid drops privileges right after this):
        # hand what start-up created (database, queue, spool, certificate, ...) to the data
        # dir's owner, the user the daemon will run as. Mail trees are created by the CLI,
        # which does the same.
        data = self.ctx.cfg.data_dir
        give_to_data_dir_owner(data, *[p for p in data.iterdir() if p.name != "mail"])
        give_to_data_dir_owner(data, data / "mail", recursive=False)

    def startService(self):
        self._warm_up_auth()
        super().startService()
        self.ctx.reactor.callWhenRunning(freeze_startup_heap)
        # after reactor start-up, when twistd's signal handlers are installed
        self.ctx.reactor.callWhenRunning(self._write_listeners)
        self.ctx.reactor.callWhenRunning(self._install_sighup)
        if not self.ctx.directory.list_users():
            log.info(
                "mailhub is running with no users yet. Next: `mailhub domain add example.com` "
                "and `mailhub user add you@example.com` (with --config {source} if you use one)",
                source=self.ctx.cfg.source,
            )

    def _warm_up_auth(self) -> None:
        """One Argon2 run per checker thread at start, waited for (~30 ms; auth/portal.py
        ``warm_up``): the first logins after a restart then cost what later ones do."""
        for checker in self.ctx.portal.checkers.values():
            warm = getattr(checker, "warm_up", None)
            if warm is not None:
                warm()

    def _install_sighup(self) -> None:
        """SIGHUP (``systemctl reload``) re-reads the TLS certificate and key. Without a
        handler SIGHUP would end the process. The configuration itself is read at start."""
        if not hasattr(self.ctx.tls_options, "reload"):
            return
        try:
            self._old_sighup = signal.signal(
                signal.SIGHUP, lambda _sig, _frame: self.ctx.reactor.callFromThread(self._sighup))
        except ValueError:  # not the main thread (embedded use): no handler
            self._old_sighup = None

    def _sighup(self) -> None:
        log.info("SIGHUP: checking the TLS certificate and key for a renewal")
        if not self.ctx.tls_options.reload():
            log.info("TLS certificate unchanged (or not loadable): the current one stays in use")

    def _write_listeners(self) -> None:
        """Record the bound ports in <data_dir>/run/listeners.json (tests and tools use
        ephemeral ports, "tcp:0", and read the real ones with ``read_listeners``)."""
        path = listeners_path(self.ctx.cfg.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": self.listener_ports()}))
        os.replace(tmp, path)

    def stopService(self):
        try:
            listeners_path(self.ctx.cfg.data_dir).unlink()
        except OSError:
            pass
        d = super().stopService()
        self.ctx.store.close()  # pooled tmp/ files (store/tmppool.py)
        old = getattr(self, "_old_sighup", None)
        if old is not None:
            try:
                signal.signal(signal.SIGHUP, old)
            except ValueError:
                pass
        return d

    def listener_ports(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for svc in self:
            if isinstance(svc, ListenerService) and svc.port is not None:
                out.setdefault(svc.listener, []).append(svc.port.getHost().port)
        return out


def build_service(cfg: Config, reactor=None) -> MailhubService:
    ctx = build_context(cfg, reactor)
    top = MailhubService(ctx)
    for ref in BACKGROUND:
        builder = _load(ref)
        svc = builder(ctx) if builder is not None else None
        if svc is not None:
            svc.setServiceParent(top)
    for name in LISTENER_NAMES:
        descs = cfg.listeners()[name]
        if not descs:
            continue
        builder = _load(PROTOCOLS[name])
        if builder is None:
            log.warn("listener {name} is configured but its protocol is not available in this "
                     "build; not listening on {descs}", name=name, descs=descs)
            continue
        for desc in descs:
            factory = builder(ctx, name)
            if name in IMPLICIT_TLS:
                factory = TLSMemoryBIOFactory(ctx.tls_options, False, factory)
            ListenerService(ctx.reactor, name, desc, factory).setServiceParent(top)
    return top
