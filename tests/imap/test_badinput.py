"""Bad input: each item of the issue's list answered with BAD/NO, the session intact, nothing
stored lost; LOGINDISABLED without TLS when the loopback exemption is off; idle timeouts."""
import imaplib
import socket
import time

import pytest

from tests.conftest import MailhubEnv, MailhubServer
from tests.imap.conftest import ALICE, BOB, RawClient, insecure_ctx, make_message

STRICT_TOML = """
[imap]
auth_failure_delay = 0.0
append_limit = 10000
plaintext_auth_loopback = false
idle_timeout = 4
idle_max = 6
"""


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    env = MailhubEnv(tmp_path_factory.mktemp("imapstrict"), extra_toml=STRICT_TOML)
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.add_user(*ALICE)
    server = MailhubServer(env).start()
    yield env, server
    server.stop()


def logged_in(imap_server) -> RawClient:
    r = imap_server.raw()
    assert r.cmd(b"LOGIN alice@example.com pw-alice")[-1].startswith(b"t1 OK")
    return r


def alive(r: RawClient) -> bool:
    return r.cmd(b"NOOP", b"alive")[-1].startswith(b"alive OK")


def test_malformed_commands(imap_server):
    r = logged_in(imap_server)
    for bad in (b"a1 FROBNICATE", b"a1 SELECT", b"a1 LIST", b"a1 LOGIN x", b"a1 STATUS INBOX",
                b"a1 STATUS INBOX (MESSAGES", b"a1 SEARCH", b"a1 CREATE \"unterminated",
                b"a1 SELECT INBOX extra junk", b"a1 APPEND INBOX"):
        out = r.cmd(bad[3:], b"a1")
        assert out[-1].startswith(b"a1 BAD"), (bad, out)
    for bad in (b")(", b"", b"*", b"+ x", b"\x00\xff\xfe"):
        r.send(bad + b"\r\n")
        assert r.line().startswith(b"* BAD")
    assert alive(r)
    r.close()


def test_unbalanced_parentheses(imap_server):
    r = logged_in(imap_server)
    r.cmd(b"SELECT INBOX")
    for bad in (b"FETCH 1 (FLAGS", b"FETCH 1 FLAGS)", b"FETCH 1 ((FLAGS)", b"SEARCH (ALL",
                b"SEARCH ALL)", b"STORE 1 +FLAGS (\\Seen", b'LIST (SUBSCRIBED "" *',
                b"SEARCH " + b"(" * 100 + b"ALL" + b")" * 100):
        assert r.cmd(bad)[-1].startswith(b"t1 BAD"), bad
    assert alive(r)
    r.close()


def test_invalid_sequence_sets(imap_server):
    r = logged_in(imap_server)
    imap_server.client().append("INBOX", make_message("seq"))
    out = r.cmd(b"SELECT INBOX")
    exists = int([l for l in out if l.endswith(b"EXISTS")][0].split()[1])
    for bad in (b"FETCH 0 FLAGS", b"FETCH 1:x FLAGS", b"FETCH %d FLAGS" % (exists + 5),
                b"STORE %d +FLAGS \\Seen" % (exists + 1), b"COPY 0 Trash", b"FETCH 1,,2 FLAGS",
                b"FETCH 4294967296 FLAGS", b"UID FETCH 0 FLAGS", b"FETCH * : 1 FLAGS"):
        assert r.cmd(bad)[-1].startswith(b"t1 BAD"), bad
    # UID sets that match nothing are fine
    assert r.cmd(b"UID FETCH 999999 FLAGS") == [b"t1 OK Fetch completed"]
    assert alive(r)
    r.close()


def test_wrong_state(imap_server):
    r = imap_server.raw()
    for cmd in (b"SELECT INBOX", b"LIST \"\" *", b"FETCH 1 FLAGS", b"APPEND INBOX {1+}\r\nx",
                b"IDLE", b"ENABLE CONDSTORE"):
        assert r.cmd(cmd)[-1].startswith(b"t1 BAD"), cmd
    r.cmd(b"LOGIN alice@example.com pw-alice")
    for cmd in (b"FETCH 1 FLAGS", b"EXPUNGE", b"CLOSE", b"UID SEARCH ALL", b"STORE 1 FLAGS x",
                b"LOGIN alice@example.com pw-alice", b"AUTHENTICATE PLAIN", b"UNSELECT"):
        out = r.cmd(cmd)
        assert out[-1].startswith(b"t1 BAD"), cmd
    assert alive(r)
    r.close()


def test_path_traversal_refused(imap_server):
    bob = imap_server.imaplib(user=BOB)
    bob.append("INBOX", None, None, make_message("bob's secret"))
    bob_count = int(bob.select("INBOX")[1][0])
    r = logged_in(imap_server)
    for cmd in (b'SELECT "../bob/INBOX"', b'SELECT "../../example.com/bob"', b'EXAMINE "../bob"',
                b'STATUS "../bob/INBOX" (MESSAGES)', b'CREATE "../bob/x"', b'DELETE "../bob"',
                b'RENAME INBOX "../bob/INBOX"', b'SELECT ".."', b'SELECT "a/../../bob"',
                b'CREATE "foo/bar"', b'SUBSCRIBE "../bob"', b'CREATE "a..b"'):
        assert r.cmd(cmd)[-1].startswith(b"t1 NO"), cmd
    assert r.cmd(b'APPEND "../bob/INBOX" {5+}\r\nhello')[-1].startswith(b"t1 NO")
    out = r.cmd(b'LIST "" "../*"')
    assert out == [b"t1 OK List completed"]
    out = r.cmd(b'LIST "../bob/" "*"')
    assert out == [b"t1 OK List completed"]
    r.cmd(b"SELECT INBOX")
    assert r.cmd(b'COPY 1:* "../bob/INBOX"')[-1].startswith(b"t1 NO")
    assert alive(r)
    assert int(bob.select("INBOX")[1][0]) == bob_count
    assert not (imap_server.env.data_dir / "mail" / "example.com" / "bob" / "x").exists()
    r.close()
    bob.logout()


def test_line_too_long(imap_server):
    r = logged_in(imap_server)
    r.send(b"t2 NOOP " + b"x" * 200000 + b"\r\n")
    assert r.line() == b"* BAD Command line too long"
    assert alive(r)
    r.close()


def test_non_append_literal_too_big(imap_server):
    r = logged_in(imap_server)
    r.send(b"t3 LOGIN {5000000}\r\n")
    assert r.line() == b"t3 BAD Literal too large"
    assert alive(r)
    r.close()


def _starttls_login(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    m.starttls(ssl_context=insecure_ctx())
    m.login(*ALICE)
    return m


def test_logindisabled_without_tls(strict):
    env, server = strict
    r = RawClient("127.0.0.1", server.port("imap"))
    assert b"LOGINDISABLED" in r.greeting and b"AUTH=PLAIN" not in r.greeting
    assert b"STARTTLS" in r.greeting
    assert r.cmd(b"LOGIN alice@example.com pw-alice")[-1].startswith(b"t1 NO [PRIVACYREQUIRED]")
    assert r.cmd(b"AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHB3LWFsaWNl")[-1].startswith(b"t1 NO")
    assert alive(r)
    r.close()
    m = _starttls_login(server.port("imap"))
    assert "LOGINDISABLED" not in m.capabilities
    m.logout()
    # implicit TLS is fine too
    m = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=insecure_ctx(), timeout=20)
    assert "LOGINDISABLED" not in m.capabilities
    m.login(*ALICE)
    m.logout()


def test_starttls_injection_dropped(strict):
    env, server = strict
    s = socket.create_connection(("127.0.0.1", server.port("imap")), timeout=10)
    s.recv(4096)
    s.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")  # b was sent in clear: must be ignored
    time.sleep(0.3)
    data = s.recv(4096)
    assert data.startswith(b"a OK") and b"b OK" not in data
    s.close()


def test_huge_literal_refused_without_buffering(strict):
    env, server = strict
    m = _starttls_login(server.port("imap"))
    assert "APPENDLIMIT=10000" in m.capabilities or b"APPENDLIMIT=10000" in m.capability()[1][0]
    before = len(env.messages("alice@example.com"))
    sock = m.sock
    # synchronising literal: refused before any data is sent
    sock.sendall(b"h1 APPEND INBOX {50000}\r\n")
    line = m.readline()
    assert line.startswith(b"h1 NO [TOOBIG]")
    # LITERAL+: the server reads and drops the bytes, then answers NO
    sock.sendall(b"h2 APPEND INBOX {60000+}\r\n" + b"x" * 60000 + b"\r\n")
    assert m.readline().startswith(b"h2 NO [TOOBIG]")
    # a gigantic announced literal does not make the server allocate anything
    sock.sendall(b"h3 APPEND INBOX {99999999999}\r\n")
    assert m.readline().startswith(b"h3 NO [TOOBIG]")
    sock.sendall(b"h4 NOOP\r\n")
    assert m.readline().startswith(b"h4 OK")
    # a message within the limit still works
    typ, data = m.append("INBOX", None, None, make_message("small"))
    assert typ == "OK"
    assert len(env.messages("alice@example.com")) == before + 1
    m.logout()


def test_idle_timeout_outside_idle(strict):
    env, server = strict
    r = RawClient("127.0.0.1", server.port("imap"))
    t0 = time.monotonic()
    line = r.line()
    assert line.startswith(b"* BYE")
    assert 3.5 < time.monotonic() - t0 < 20
    with pytest.raises((ConnectionError, OSError)):
        r.line()


def test_idle_max_duration(strict):
    env, server = strict
    m = _starttls_login(server.port("imap"))
    m.select("INBOX")
    m.send(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+ ")
    t0 = time.monotonic()
    line = m.readline()
    assert line.startswith(b"* BYE")
    assert 5.5 < time.monotonic() - t0 < 25  # idle_max (6 s), not idle_timeout (4 s)


def test_random_garbage_keeps_session(imap_server):
    import random
    rng = random.Random(99)
    r = logged_in(imap_server)
    r.cmd(b"SELECT INBOX")
    seeds = [b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)])", b'SEARCH OR FROM "x" TO y',
             b"STORE 1 +FLAGS.SILENT (\\Seen)", b'LIST "" "*"', b"UID FETCH 1:* (UID)",
             b'STATUS INBOX (MESSAGES)']
    alphabet = b'()[]<>"\\*%:,.+- 0123456789ABCXYZabc\x01\x7f\xc3'
    for n in range(300):
        s = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(s) + 1)
            if rng.random() < 0.5 and s:
                del s[min(i, len(s) - 1)]
            else:
                s.insert(i, rng.choice(alphabet))
        tag = b"g%d" % n
        out = r.cmd(bytes(s).replace(b"{", b"(").replace(b"}", b")"), tag)
        assert out[-1].split(b" ")[1] in (b"OK", b"NO", b"BAD"), out
    assert alive(r)
    r.close()


def test_multiappend(imap_server):
    r = logged_in(imap_server)
    out = r.cmd(b"APPEND Drafts (\\Draft) {6+}\r\nm1\r\n\r\n (\\Seen) {6+}\r\nm2\r\n\r\n")
    assert out[-1].startswith(b"t1 OK [APPENDUID ")
    uids = out[-1].split(b"]")[0].split()[-1]
    assert b":" in uids or b"," in uids
    r.close()


def test_failed_logins_are_throttled(tmp_path):
    env = MailhubEnv(tmp_path, extra_toml="[imap]\nauth_failure_delay = 0.0\n[smtp]\nauth_failure_delay = 0.0\n")
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.add_user(*ALICE)
    server = MailhubServer(env).start()
    try:
        r = RawClient("127.0.0.1", server.port("imap"))
        codes = []
        for i in range(12):
            out = r.cmd(b"LOGIN alice@example.com wrong%d" % i, b"f%d" % i)
            codes.append(out[-1].split(b" ")[2])
        assert codes[0] == b"[AUTHENTICATIONFAILED]"
        assert codes[-1] == b"[UNAVAILABLE]"  # the IP is refused for a while, even with the password
        assert r.cmd(b"LOGIN alice@example.com pw-alice")[-1].startswith(b"t1 NO [UNAVAILABLE]")
        assert alive(r)
        r.close()
        assert "wrong" not in server.log()  # passwords never logged
    finally:
        server.stop()
