"""The POP3 session state machine over an in-memory transport and a fake clock, with the real
store, directory and portal (password checks run inline): commands, bad input, the snapshot,
DELE-at-QUIT, the mailbox lock, plaintext refusal, failure delays and the idle timeout."""
from __future__ import annotations

import base64
import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mailhub.auth import build_portal
from mailhub.config import load
from mailhub.pop3server.factory import build_factory
from mailhub.service import build_context
from tests.pop3.conftest import PASSWORD, deliver, make_message

USER = "user@pop.test"


class Env:
    def __init__(self, tmp_path, extra: str = ""):
        cfg_path = tmp_path / "mailhub.toml"
        cfg_path.write_text(
            f'[server]\nhostname = "pop.test"\ndata_dir = "{tmp_path / "data"}"\n'
            f"[pop3]\nauth_failure_delay = 2.0\nidle_timeout = 600\n{extra}\n")
        self.clock = Clock()
        self.ctx = build_context(load(cfg_path), reactor=self.clock)
        self.ctx.portal, self.ctx.realm = build_portal(self.ctx.store, self.ctx.directory,
                                                       threaded=False)
        self.ctx.directory.add_domain("pop.test")
        for addr in (USER, "other@pop.test"):
            self.ctx.directory.add_user(addr, PASSWORD)
            self.ctx.store.create_user(addr)
        self.factory = build_factory(self.ctx, "pop3")
        self.data_dir = tmp_path / "data"

    def connect(self, host="127.0.0.1", factory=None):
        proto = (factory or self.factory).buildProtocol(None)
        tr = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto.makeConnection(tr)
        return Session(proto, tr)

    def files(self, addr=USER):
        base = self.data_dir / "mail" / "pop.test" / addr.split("@")[0]
        return sorted(n for sub in ("new", "cur") for n in os.listdir(base / sub))


class Session:
    def __init__(self, proto, tr):
        self.proto, self.tr = proto, tr
        assert self.take().startswith(b"+OK ")

    def take(self) -> bytes:
        out = self.tr.value()
        self.tr.clear()
        return out

    def cmd(self, line: bytes) -> bytes:
        self.proto.dataReceived(line + b"\r\n")
        return self.take()

    def login(self, user=USER, pw=PASSWORD) -> bytes:
        assert self.cmd(b"USER " + user.encode()) == b"+OK\r\n"
        return self.cmd(b"PASS " + pw.encode())


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def test_login_stat_list_uidl_retr_top(env):
    msgs = [make_message(i, 2000) for i in range(3)]
    keys = deliver(env, USER, msgs)
    s = env.connect()
    assert s.login().startswith(b"+OK Logged in, 3 messages")
    assert s.cmd(b"STAT") == b"+OK 3 %d\r\n" % sum(len(m) for m in msgs)
    listing = s.cmd(b"LIST")
    assert listing.startswith(b"+OK 3 messages")
    assert listing.endswith(b"\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(len(m) for m in msgs))
    assert s.cmd(b"LIST 2") == b"+OK 2 %d\r\n" % len(msgs[1])
    assert s.cmd(b"UIDL") == b"+OK\r\n" + b"".join(
        b"%d %s\r\n" % (i + 1, k.encode()) for i, k in enumerate(keys)) + b".\r\n"
    assert s.cmd(b"uidl 3") == b"+OK 3 %s\r\n" % keys[2].encode()
    assert s.cmd(b"RETR 1") == b"+OK %d octets\r\n" % len(msgs[0]) + msgs[0] + b".\r\n"
    top = s.cmd(b"TOP 2 1")
    head, _, body = msgs[1].partition(b"\r\n\r\n")
    assert top == b"+OK Top of message follows\r\n" + head + b"\r\n\r\n" + \
        body.split(b"\r\n")[0] + b"\r\n.\r\n"
    assert s.cmd(b"NOOP") == b"+OK\r\n"
    assert s.cmd(b"QUIT").startswith(b"+OK")
    assert s.tr.disconnecting


def test_capa_before_and_after_login(env):
    s = env.connect()
    caps = s.cmd(b"CAPA").split(b"\r\n")
    assert caps[0].startswith(b"+OK") and caps[-2] == b"."
    for c in (b"TOP", b"UIDL", b"USER", b"SASL PLAIN", b"STLS", b"RESP-CODES",
              b"AUTH-RESP-CODE", b"PIPELINING"):
        assert c in caps
    s.login()
    caps = s.cmd(b"CAPA").split(b"\r\n")
    assert b"TOP" in caps and b"STLS" not in caps and b"USER" not in caps


def test_bad_input_keeps_session(env):
    deliver(env, USER, [make_message(1), make_message(2)])
    s = env.connect()
    assert s.cmd(b"FOO bar") == b"-ERR Unknown command\r\n"
    assert s.cmd(b"STAT").startswith(b"-ERR")           # not yet logged in
    assert s.cmd(b"PASS x") == b"-ERR USER first\r\n"
    assert s.cmd(b"") == b"-ERR Empty command\r\n"
    assert s.cmd(b"\xff\xfe") == b"-ERR Unknown command\r\n"
    assert s.cmd(b"X" * 300) == b"-ERR Line too long (the limit is 255 octets)\r\n"
    assert s.login().startswith(b"+OK")
    assert s.cmd(b"RETR 0") == b"-ERR No such message\r\n"
    assert s.cmd(b"RETR 3") == b"-ERR No such message\r\n"
    assert s.cmd(b"RETR -1") == b"-ERR Invalid message number\r\n"
    assert s.cmd(b"RETR one") == b"-ERR Invalid message number\r\n"
    assert s.cmd(b"RETR 99999999999999999999") == b"-ERR Invalid message number\r\n"
    assert s.cmd(b"RETR") == b"-ERR Wrong number of arguments\r\n"
    assert s.cmd(b"LIST 1 2") == b"-ERR Wrong number of arguments\r\n"
    assert s.cmd(b"TOP 1") == b"-ERR Wrong number of arguments\r\n"
    assert s.cmd(b"TOP 1 x") == b"-ERR Invalid line count\r\n"
    assert s.cmd(b"USER again") == b"-ERR Command not valid in this state\r\n"
    assert s.cmd(b"STLS") == b"-ERR Command not valid in this state\r\n"
    assert s.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
    assert s.cmd(b"DELE 1") == b"-ERR Message 1 already deleted\r\n"
    assert s.cmd(b"RETR 1") == b"-ERR Message 1 already deleted\r\n"
    assert s.cmd(b"LIST 1") == b"-ERR Message 1 already deleted\r\n"
    assert s.cmd(b"TOP 1 0") == b"-ERR Message 1 already deleted\r\n"
    assert s.cmd(b"STAT").startswith(b"+OK 1 ")
    assert s.cmd(b"A" * 1000 + b" 1") == b"-ERR Line too long (the limit is 255 octets)\r\n"
    assert s.cmd(b"NOOP") == b"+OK\r\n"
    assert not s.tr.disconnecting


def test_dele_only_at_quit_and_rset(env):
    deliver(env, USER, [make_message(i) for i in range(3)])
    s = env.connect()
    s.login()
    assert s.cmd(b"DELE 1").startswith(b"+OK")
    assert s.cmd(b"RSET").startswith(b"+OK 3 messages")
    assert s.cmd(b"DELE 2").startswith(b"+OK")
    assert s.cmd(b"DELE 3").startswith(b"+OK")
    assert s.cmd(b"LIST") .split(b"\r\n")[1:3] == [b"1 %d" % len(make_message(0)), b"."]
    assert len(env.files()) == 3  # nothing removed before QUIT
    assert s.cmd(b"QUIT") == b"+OK Logging out, 2 messages deleted\r\n"
    assert len(env.files()) == 1


def test_dropped_connection_deletes_nothing_and_unlocks(env):
    deliver(env, USER, [make_message(i) for i in range(2)])
    s = env.connect()
    s.login()
    assert s.cmd(b"DELE 1").startswith(b"+OK")
    assert s.cmd(b"DELE 2").startswith(b"+OK")
    s.proto.connectionLost(None)
    assert len(env.files()) == 2
    s2 = env.connect()
    assert s2.login().startswith(b"+OK Logged in, 2 messages")


def test_one_session_per_mailbox(env):
    s1 = env.connect()
    assert s1.login().startswith(b"+OK")
    s2 = env.connect()
    assert s2.login() == b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"
    # the refused session stays usable: another mailbox
    assert s2.login("other@pop.test").startswith(b"+OK")
    # the pop3s listener shares the lock table
    s3 = env.connect(factory=build_factory(env.ctx, "pop3s"))
    assert s3.login() .startswith(b"-ERR [IN-USE]")
    s1.cmd(b"QUIT")
    s1.proto.connectionLost(None)
    s4 = env.connect()
    assert s4.login().startswith(b"+OK")


def test_snapshot_at_login_and_expunged_meanwhile(env):
    deliver(env, USER, [make_message(i) for i in range(3)])
    s = env.connect()
    s.login()
    deliver(env, USER, [make_message(9)])          # arrives during the session
    assert s.cmd(b"STAT").startswith(b"+OK 3 ")
    folder = env.ctx.store.folder(USER, "INBOX")
    infos = folder.scan()
    folder.set_flags(infos[0], "S")                # IMAP flag change renames message 1
    assert folder.remove(infos[1])                 # IMAP expunges message 2
    assert s.cmd(b"RETR 1").startswith(b"+OK")
    assert s.cmd(b"RETR 2") == b"-ERR Message 2 no longer exists (removed by another session)\r\n"
    assert s.cmd(b"RETR 3").startswith(b"+OK")
    assert s.cmd(b"UIDL 2").startswith(b"+OK 2 ")  # numbering is stable within the session
    assert s.cmd(b"DELE 1").startswith(b"+OK")
    assert s.cmd(b"DELE 2").startswith(b"+OK")
    assert s.cmd(b"QUIT").startswith(b"+OK")
    left = env.files()
    assert len(left) == 2                            # message 3 and the new one
    assert any(":2,S" in n for n in left)            # message 3 was RETR'd: \Seen
    s2 = env.connect()
    assert s2.login().startswith(b"+OK Logged in, 2 messages")


def test_plaintext_refused_off_loopback(env):
    s = env.connect(host="192.0.2.7")
    caps = s.cmd(b"CAPA").split(b"\r\n")
    assert b"STLS" in caps and b"USER" not in caps and b"SASL PLAIN" not in caps
    assert s.cmd(b"USER " + USER.encode()).startswith(b"-ERR [AUTH] Plaintext authentication")
    assert s.cmd(b"PASS x").startswith(b"-ERR [AUTH] Plaintext authentication")
    assert s.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())) \
        .startswith(b"-ERR [AUTH] Plaintext authentication")
    assert not s.tr.disconnecting


def test_loopback_exemption_is_injectable(env):
    env.factory.allow_plaintext = lambda host: False
    s = env.connect()
    assert s.cmd(b"USER " + USER.encode()).startswith(b"-ERR [AUTH]")


def test_auth_plain_initial_and_continuation(env):
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    s = env.connect()
    assert s.cmd(b"AUTH") == b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n"
    assert s.cmd(b"AUTH CRAM-MD5") == b"-ERR Unsupported authentication mechanism\r\n"
    assert s.cmd(b"AUTH PLAIN") == b"+ \r\n"
    assert s.cmd(b"*") == b"-ERR Authentication cancelled\r\n"
    assert s.cmd(b"AUTH PLAIN") == b"+ \r\n"
    assert s.cmd(b"@@@") == b"-ERR [AUTH] Malformed AUTH PLAIN response\r\n"
    assert s.cmd(b"AUTH PLAIN " + token).startswith(b"+OK Logged in")
    s.cmd(b"QUIT")
    s.proto.connectionLost(None)
    s = env.connect()
    assert s.cmd(b"AUTH PLAIN") == b"+ \r\n"
    assert s.cmd(token).startswith(b"+OK Logged in")
    s.cmd(b"QUIT")
    s.proto.connectionLost(None)
    # a SASL response may exceed the 255-octet command limit (a long password)
    long_pw = base64.b64encode(f"\0{USER}\0{'p' * 400}".encode())
    s = env.connect()
    assert s.cmd(b"AUTH PLAIN") == b"+ \r\n"
    assert s.cmd(long_pw) == b""                      # checked, failed after the delay
    env.clock.advance(10)
    assert s.take() == b"-ERR [AUTH] Authentication failed\r\n"
    assert s.cmd(b"USER " + b"u" * 300) == b"-ERR Line too long (the limit is 255 octets)\r\n"


def test_auth_plain_foreign_authzid_refused(env):
    s = env.connect()
    token = base64.b64encode(f"other@pop.test\0{USER}\0{PASSWORD}".encode())
    assert s.cmd(b"AUTH PLAIN " + token) == b""      # answered after the failure delay
    env.clock.advance(2.0)
    assert s.take() == b"-ERR [AUTH] Authentication failed\r\n"


def test_wrong_password_delayed_then_throttled(env):
    s = env.connect()
    s.cmd(b"USER " + USER.encode())
    assert s.cmd(b"PASS wrong") == b""
    assert s.cmd(b"NOOP") == b""                    # pipelined: waits behind the failure
    env.clock.advance(1.9)
    assert s.take() == b""
    env.clock.advance(0.2)
    assert s.take() == b"-ERR [AUTH] Authentication failed\r\n" \
        b"-ERR Command not valid in this state\r\n"
    # repeated failures from this IP: longer delays, then refused even with the right password
    for _ in range(env.ctx.throttle.max_failures):
        s.cmd(b"USER " + USER.encode())
        s.cmd(b"PASS wrong")
        env.clock.advance(100)
        s.take()
    s.cmd(b"USER " + USER.encode())
    s.cmd(b"PASS " + PASSWORD.encode())
    env.clock.advance(100)
    assert s.take() == b"-ERR [SYS/TEMP] Too many failed logins; try again later\r\n"
    assert not s.tr.disconnecting


def test_idle_timeout(env):
    s = env.connect()
    s.login()
    env.clock.advance(599)
    assert s.cmd(b"NOOP") == b"+OK\r\n"          # activity resets the timer
    env.clock.advance(599)
    assert not s.tr.disconnecting
    env.clock.advance(2)
    assert s.take() == b"-ERR Disconnected for inactivity\r\n"
    assert s.tr.disconnecting
    s.proto.connectionLost(None)
    assert not env.factory.locks.held(USER)


def test_pipelined_commands_answered_in_order(env):
    deliver(env, USER, [make_message(i) for i in range(2)])
    s = env.connect()
    s.login()
    s.proto.dataReceived(b"STAT\r\nRETR 1\r\nDELE 2\r\nLIST\r\nNOOP\r\n")
    out = s.take()
    assert out.startswith(b"+OK 2 ")
    i_retr = out.index(b"+OK %d octets" % len(make_message(0)))
    i_dele = out.index(b"+OK Message 2 deleted")
    i_list = out.index(b"+OK 1 messages")
    assert i_retr < i_dele < i_list < out.rindex(b"+OK\r\n")


class PausingTransport(StringTransport):
    """Pauses its producer once more than ``limit`` octets wait, like a TCP transport whose
    client does not read; ``drain()`` takes the data and resumes it."""

    limit = 100_000
    out_paused = False

    def write(self, data):
        super().write(data)
        if self.producer is not None and not self.out_paused and \
                len(self.io.getvalue()) > self.limit:
            self.out_paused = True
            self.producer.pauseProducing()

    def drain(self, clock) -> bytes:
        out = self.value()
        self.clear()
        if self.out_paused:
            self.out_paused = False
            self.producer.resumeProducing()
            assert self.producerState == "producing"
            clock.advance(0)
        return out


def test_large_message_streams_with_backpressure(env):
    big = b"Subject: big\r\n\r\n" + b"".join(
        (b".dotted line %d\r\n" % i) if i % 7 == 0 else (b"line %d\r\n" % i)
        for i in range(40000))
    assert len(big) > 256 * 1024
    deliver(env, USER, [big, make_message(2)])
    proto = env.factory.buildProtocol(None)
    tr = PausingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(tr)
    assert tr.producer is proto and tr.streaming
    proto.dataReceived(b"USER %s\r\nPASS %s\r\n" % (USER.encode(), PASSWORD.encode()))
    tr.clear()
    proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    chunks = []
    while True:
        assert len(tr.value()) <= PausingTransport.limit + 2 * 65536   # bounded buffering
        out = tr.drain(env.clock)
        if not out:
            break
        chunks.append(out)
    assert len(chunks) > 3
    wire = b"".join(chunks)
    head, _, rest = wire.partition(b"\r\n")
    assert head == b"+OK %d octets" % len(big)
    body, _, after = rest.partition(b"\r\n.\r\n")
    assert after == b"+OK\r\n"                     # the NOOP waited for the message
    assert body + b"\r\n" == big.replace(b"\r\n.", b"\r\n..")
    proto.dataReceived(b"TOP 1 2\r\n")
    top = b""
    while True:
        out = tr.drain(env.clock)
        if not out:
            break
        top += out
    assert top == b"+OK Top of message follows\r\nSubject: big\r\n\r\n..dotted line 0\r\n" \
        b"line 1\r\n.\r\n"


def test_replies_stop_while_the_client_does_not_read(env):
    deliver(env, USER, [make_message(1, 50_000)])
    proto = env.factory.buildProtocol(None)
    tr = PausingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(tr)
    proto.dataReceived(b"USER %s\r\nPASS %s\r\n" % (USER.encode(), PASSWORD.encode()))
    tr.clear()
    proto.dataReceived(b"RETR 1\r\n" * 1000)
    # paused after about 100 kB of replies: the rest of the commands wait unprocessed
    assert len(tr.value()) < 200_000
    assert tr.producerState == "producing"        # 8 kB of commands: still reading
    proto.dataReceived(b"NOOP\r\n" * 10000)
    assert tr.producerState == "paused"           # > 64 kB waiting: stop reading
    total = 0
    while True:
        out = tr.drain(env.clock)
        if not out:
            break
        total += len(out)
    assert tr.producerState == "producing"
    assert total == 1000 * (len(b"+OK %d octets\r\n" % len(make_message(1, 50_000)))
                            + len(make_message(1, 50_000)) + 3) + 10000 * len(b"+OK\r\n")


def test_user_without_mail_tree_has_an_empty_maildrop(env):
    env.ctx.directory.add_user("fresh@pop.test", PASSWORD)  # no store.create_user
    s = env.connect()
    assert s.login("fresh@pop.test").startswith(b"+OK Logged in, 0 messages (0 octets)")
    assert s.cmd(b"LIST") == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert s.cmd(b"RETR 1") == b"-ERR No such message\r\n"
    assert s.cmd(b"QUIT").startswith(b"+OK")


def test_set_nodelay_plain_and_under_a_tls_wrapper():
    import socket
    from types import SimpleNamespace

    from mailhub.pop3server.protocol import set_nodelay

    for wrap in (lambda sk: SimpleNamespace(socket=sk),
                 lambda sk: SimpleNamespace(transport=SimpleNamespace(socket=sk))):
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            assert sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            set_nodelay(wrap(sk))
            assert sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sk.close()


def test_retr_sends_the_whole_file_when_the_name_understates_its_size(env):
    """RETR reads the size the listing gave (+1): a file whose ,S= says less (another
    program wrote it) is still sent whole, in one reply or streamed."""
    small, big = make_message(1, 3000), make_message(2, 300 * 1024)
    inbox = env.data_dir / "mail" / "pop.test" / "user"
    (inbox / "cur" / "1795400000.M1P1Q1.other,S=10:2,").write_bytes(small)
    (inbox / "cur" / "1795400001.M1P1Q2.other,S=100:2,").write_bytes(big)
    s = env.connect()
    assert s.login().startswith(b"+OK Logged in, 2 messages")
    assert s.cmd(b"RETR 1") == b"+OK %d octets\r\n" % len(small) + small + b".\r\n"
    out = s.cmd(b"RETR 2")
    while not out.endswith(b"\r\n.\r\n"):
        s.proto.resumeProducing()
        env.clock.advance(0)
        out += s.take()
    assert out == b"+OK %d octets\r\n" % len(big) + big + b".\r\n"
