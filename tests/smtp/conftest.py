"""SMTP test fixtures: an in-process session on a StringTransport, and a real server.

``smtp_unit`` builds the protocol exactly as the listener does (SMTPFactory from a real
config and a real SQLite directory) but with a task.Clock reactor, a recording MDA whose
Deferreds the test fires, and an optional fake outbound queue, so ordering, timeouts and
error paths are tested without sockets or sleeps. ``smtp_env``/``smtp_server`` run the real
``twistd mailhub`` with users and aliases for the client-level tests.
"""
from __future__ import annotations

import smtplib
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailhub import config
from mailhub.auth import AuthThrottle, build_portal
from mailhub.directory import open_directory
from mailhub.smtpserver.factory import build_factory
from mailhub.store import MailStore
from tests.conftest import MailhubEnv, MailhubServer

USERS = {"alice@example.com": "alice-pw", "bob@example.com": "bob-pw"}


class RecordingMDA:
    """Stands in for DeliveryAgent: records each call, the test fires the Deferred."""

    def __init__(self):
        self.calls = []  # (sender, recipients, message bytes, deferred)
        self.auto = None  # None: leave pending; else a callable(call) -> result

    def deliver(self, sender, recipients, source, prefix=b"", folder="INBOX"):
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        d = defer.Deferred()
        self.calls.append((sender, list(recipients), data, d))
        if self.auto is not None:
            result = self.auto(self.calls[-1])
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
        return d


class FakeQueue:
    def __init__(self):
        self.calls = []

    def enqueue(self, sender, recipients, message_path, dkim_domain=None):
        p = Path(message_path)
        self.calls.append((sender, list(recipients), p.read_bytes(), dkim_domain))
        p.unlink()  # the queue takes ownership (moves the file away)
        return defer.succeed(f"Q{len(self.calls)}")


class Session:
    """One SMTP session over a StringTransport."""

    def __init__(self, factory, ip="127.0.0.1"):
        self.factory = factory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes | str) -> None:
        self.proto.dataReceived(data.encode() if isinstance(data, str) else data)

    def take(self) -> str:
        out = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return out

    def codes(self) -> list[str]:
        """Final reply lines (code + text) since the last take()."""
        return [l for l in self.take().split("\r\n") if l[3:4] == " "]

    def lose(self):
        self.proto.connectionLost(None)


class Unit:
    def __init__(self, tmp_path: Path, extra_toml: str = ""):
        data = tmp_path / "data"
        cfgfile = tmp_path / "mailhub.toml"
        cfgfile.write_text(f'[server]\nhostname = "mx.test.example"\ndata_dir = "{data}"\n'
                           f"{extra_toml}\n")
        self.cfg = config.load(cfgfile)
        self.clock = task.Clock()
        self.directory = open_directory(data)
        self.store = MailStore(data / "mail")
        for d in ("example.com", "example.org"):
            self.directory.add_domain(d)
        for u, pw in USERS.items():
            self.directory.add_user(u, pw)
        self.directory.add_alias("info@example.com", ["alice@example.com"])
        self.directory.add_alias("fwd@example.com", ["someone@elsewhere.example"])
        self.directory.add_alias("@example.org", ["bob@example.com"])
        portal, realm = build_portal(self.store, self.directory, threaded=False)
        self.mda = RecordingMDA()
        self.ctx = SimpleNamespace(
            cfg=self.cfg, reactor=self.clock, directory=self.directory, store=self.store,
            portal=portal, realm=realm, mda=self.mda, tls_options=None,
            throttle=AuthThrottle(base_delay=self.cfg["smtp"]["auth_failure_delay"],
                                  clock=self.clock.seconds),
            queue=None, extras={},
        )
        self._factories = {}

    def factory(self, role: str = "mx"):
        if role not in self._factories:
            self._factories[role] = build_factory(self.ctx, role)
        return self._factories[role]

    def session(self, role: str = "mx", ip: str = "127.0.0.1") -> Session:
        s = Session(self.factory(role), ip)
        assert s.take().startswith("220 ")
        return s


@pytest.fixture
def smtp_unit(tmp_path):
    return Unit(tmp_path)


@pytest.fixture
def make_unit(tmp_path):
    n = [0]

    def make(extra_toml: str = "") -> Unit:
        n[0] += 1
        root = tmp_path / f"u{n[0]}"
        root.mkdir()
        return Unit(root, extra_toml)

    return make


# -- real server ----------------------------------------------------------------------------
SERVER_TOML = """
[smtp]
auth_failure_delay = 0.2
idle_timeout = 3
"""


def add_users(env: MailhubEnv, users: dict[str, str], aliases: dict[str, list[str]] = {},
              domains: tuple[str, ...] = ()) -> None:
    """What ``mailhub domain/user/alias add`` do, in process (the CLI costs a Python start
    per call; tests/foundation covers the CLI itself)."""
    env.data_dir.mkdir(parents=True, exist_ok=True)
    directory = open_directory(env.data_dir)
    store = MailStore(env.data_dir / "mail")
    wanted = list(domains) + [a.rpartition("@")[2] for a in list(users) + list(aliases)]
    for d in dict.fromkeys(wanted):
        if not directory.has_domain(d):
            directory.add_domain(d)
    for u, pw in users.items():
        store.create_user(directory.add_user(u, pw))
    for src, targets in aliases.items():
        directory.add_alias(src, targets)


def setup_env(env: MailhubEnv) -> MailhubEnv:
    add_users(env, USERS, {"info@example.com": ["alice@example.com"]})
    return env


@pytest.fixture
def smtp_env(tmp_path) -> MailhubEnv:
    return setup_env(MailhubEnv(tmp_path, extra_toml=SERVER_TOML))


@pytest.fixture
def smtp_server(smtp_env):
    server = MailhubServer(smtp_env).start()
    yield server
    server.stop()


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()


def client(server, listener: str = "mx", timeout: float = 10) -> smtplib.SMTP:
    if listener == "submissions":
        return smtplib.SMTP_SSL("127.0.0.1", server.port(listener), timeout=timeout,
                                context=tls_context())
    return smtplib.SMTP("127.0.0.1", server.port(listener), timeout=timeout)
