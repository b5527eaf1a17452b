"""LOGIN opens the user's INBOX index while the password is being checked (in process, with
a password check that stays pending until the test lets it finish)."""
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailhub.config import load
from mailhub.imapserver.factory import build_factory
from mailhub.service import build_context


class PendingPortal:
    """portal.login() returns a Deferred the test fires."""

    def __init__(self):
        self.pending: list[defer.Deferred] = []

    def login(self, creds, mind, *ifaces):
        d = defer.Deferred()
        self.pending.append(d)
        return d


class Avatar:
    address = "alice@example.com"


def setup(tmp_path):
    cfg_path = tmp_path / "mailhub.toml"
    cfg_path.write_text(f'[server]\nhostname = "imap.test"\ndata_dir = "{tmp_path / "data"}"\n'
                        "[imap]\nauth_failure_delay = 0.0\n")
    clock = Clock()
    ctx = build_context(load(cfg_path), reactor=clock)
    ctx.directory.add_domain("example.com")
    ctx.directory.add_user("alice@example.com", "pw")
    ctx.store.create_user("alice@example.com")
    ctx.portal = PendingPortal()
    factory = build_factory(ctx, "imap")
    proto = factory.buildProtocol(None)
    tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(tr)
    return ctx, clock, proto, tr, factory.registry


def inbox_path(ctx):
    return str(ctx.store.folder("alice@example.com", "INBOX").path)


def test_inbox_index_is_opened_during_the_password_check(tmp_path):
    ctx, clock, proto, tr, registry = setup(tmp_path)
    proto.dataReceived(b"a1 LOGIN alice@example.com pw\r\n")
    assert inbox_path(ctx) not in registry._open  # not on the LOGIN's own turn
    clock.advance(0)
    assert inbox_path(ctx) in registry._open  # held while the check runs
    ctx.portal.pending[0].callback((None, Avatar(), lambda: None))
    assert b"a1 OK" in tr.value()
    assert inbox_path(ctx) not in registry._open and inbox_path(ctx) in registry._idle
    proto.dataReceived(b"a2 SELECT INBOX\r\n")
    assert b"a2 OK [READ-WRITE]" in tr.value()
    assert registry._open[inbox_path(ctx)].users == 1  # the same (warm) index, now selected


def test_failed_login_releases_and_unknown_user_loads_nothing(tmp_path):
    ctx, clock, proto, tr, registry = setup(tmp_path)
    proto.dataReceived(b"a1 LOGIN nobody@example.com pw\r\n")
    clock.advance(0)
    assert registry._open == {} and registry._idle == {}
    ctx.portal.pending[0].errback(UnauthorizedLogin())
    clock.advance(1)
    assert b"a1 NO [AUTHENTICATIONFAILED]" in tr.value()
    proto.dataReceived(b"a2 LOGIN alice@example.com wrong\r\n")
    clock.advance(0)
    assert inbox_path(ctx) in registry._open
    ctx.portal.pending[1].errback(UnauthorizedLogin())
    clock.advance(1)
    assert b"a2 NO [AUTHENTICATIONFAILED]" in tr.value()
    assert registry._open == {}  # released: nothing stays held for a failed login
