"""POP3 against a real ``twistd mailhub`` with real clients: Python poplib (plain + STLS,
implicit TLS), Debian's fetchmail and curl; UIDL stability across a restart; the mailbox lock
across connections, a dropped connection and SIGKILL; the idle timeout; plaintext refusal."""
from __future__ import annotations

import base64
import importlib.util
import poplib
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from tests.pop3.conftest import PASSWORD, deliver, make_message

USER = "user@pop.test"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def plain_client(server, timeout=15) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", server.port("pop3"), timeout=timeout)


def tls_client(server, timeout=15) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=tls_context(),
                           timeout=timeout)


def body_lines(msg: bytes) -> list[bytes]:
    """How poplib returns a message: lines without CRLF (dot-unstuffed)."""
    return msg.split(b"\r\n")[:-1]


@pytest.fixture
def started(mh_env, server_factory):
    """(env, server) with user@pop.test and other@pop.test; config from ``extra`` if given."""
    def start(extra: str = ""):
        if extra:
            mh_env.write_config(extra)
        mh_env.add_user(USER, PASSWORD)
        mh_env.add_user("other@pop.test", PASSWORD)
        return server_factory(mh_env).start()
    return start


def test_poplib_plain_stls_and_implicit_tls(mh_env, started):
    server = started()
    msgs = [make_message(i, 3000) for i in range(3)] + [
        b"Subject: dots\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nlast"]
    keys = deliver(mh_env, USER, msgs)

    c = plain_client(server)
    assert b"POP3 server ready" in c.getwelcome()
    caps = c.capa()
    assert "STLS" in caps and "UIDL" in caps and caps["SASL"] == ["PLAIN"]
    assert c.stls(tls_context()).startswith(b"+OK")
    caps = c.capa()
    assert "STLS" not in caps and "USER" in caps
    c.user(USER)
    assert c.pass_(PASSWORD).startswith(b"+OK Logged in, 4 messages")
    assert c.stat() == (4, sum(len(m) for m in msgs))
    assert [l.split()[1].decode() for l in c.uidl()[1]] == keys
    for i, m in enumerate(msgs[:3], 1):
        resp, lines, octets = c.retr(i)
        assert lines == body_lines(m)
    resp, lines, _ = c.retr(4)
    assert lines == [b"Subject: dots", b"", b".starts with a dot", b"..two", b".", b"last"]
    assert c.dele(2).startswith(b"+OK")
    assert c.quit().startswith(b"+OK")
    assert len(mh_env.messages(USER)) == 3

    s = tls_client(server)
    caps = s.capa()
    assert "STLS" not in caps and "USER" in caps
    s.user(USER)
    assert s.pass_(PASSWORD).startswith(b"+OK Logged in, 3 messages")
    assert [l.split()[1].decode() for l in s.uidl()[1]] == [keys[0], keys[2], keys[3]]
    assert s.retr(2)[1] == body_lines(msgs[2])
    top = s.top(1, 1)[1]
    assert top[:3] == body_lines(msgs[0])[:3] and len(top) == body_lines(msgs[0]).index(b"") + 2
    # AUTH PLAIN with an initial response over implicit TLS (RFC 5034)
    s.quit()
    s = tls_client(server)
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert s._shortcmd("AUTH PLAIN " + token).startswith(b"+OK Logged in")
    assert s.stat()[0] == 3
    s.quit()


def test_plaintext_refused_before_stls_when_loopback_not_exempt(mh_env, started):
    server = started("[pop3]\nplaintext_auth_loopback = false\n")
    c = plain_client(server)
    caps = c.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication"):
        c.user(USER)
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c._shortcmd("AUTH PLAIN " + token)
    c.stls(tls_context())
    c.user(USER)
    assert c.pass_(PASSWORD).startswith(b"+OK")
    c.quit()
    # implicit TLS is secure from the start
    s = tls_client(server)
    s.user(USER)
    assert s.pass_(PASSWORD).startswith(b"+OK")
    s.quit()


def test_stls_discards_pipelined_plaintext(mh_env, started):
    """Commands sent in the same packet as STLS must not run (STARTTLS injection)."""
    server = started()
    raw = socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"+OK")
    raw.sendall(b"STLS\r\nUSER " + USER.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert f.readline().startswith(b"+OK Begin TLS")
    tls = tls_context().wrap_socket(raw, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"STAT\r\n")
    assert tf.readline() == b"-ERR Command not valid in this state\r\n"  # not logged in
    tls.sendall(b"QUIT\r\n")
    assert tf.readline().startswith(b"+OK")
    tls.close()


def test_wrong_password_is_delayed(mh_env, started):
    server = started("[pop3]\nauth_failure_delay = 0.5\n")
    c = plain_client(server)
    c.user(USER)
    t0 = time.monotonic()
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        c.pass_("wrong")
    assert time.monotonic() - t0 >= 0.45
    c.user(USER)
    assert c.pass_(PASSWORD).startswith(b"+OK")  # the session survives the failure
    c.quit()


def test_bad_input_over_the_wire(mh_env, started):
    server = started()
    deliver(mh_env, USER, [make_message(1)])
    c = plain_client(server)
    c.user(USER)
    c.pass_(PASSWORD)
    for cmd, err in [("XYZZY", b"-ERR Unknown command"), ("RETR 2", b"-ERR No such message"),
                     ("RETR x", b"-ERR Invalid message number"), ("X" * 400, b"-ERR Line too long")]:
        with pytest.raises(poplib.error_proto) as e:
            c._shortcmd(cmd)
        assert e.value.args[0].startswith(err)
    c.dele(1)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        c.retr(1)
    assert c.noop().startswith(b"+OK")
    c.quit()


def test_uidl_stable_across_restart_and_imap_flag_changes(mh_env, server_factory, started):
    server = started()
    keys = deliver(mh_env, USER, [make_message(i) for i in range(5)])
    c = plain_client(server)
    c.user(USER)
    c.pass_(PASSWORD)
    before = c.uidl()[1]
    c.retr(2)
    c.quit()  # marks message 2 \Seen: its file is renamed into cur/
    assert [l.split()[1].decode() for l in before] == keys
    assert len(set(keys)) == 5
    server.stop()
    # a flag change by IMAP renames the file (the :2, suffix); the UIDL must not change
    from mailhub.store import MailStore
    store = MailStore(mh_env.data_dir / "mail")
    folder = store.folder(USER, "INBOX")
    for info in folder.scan():
        folder.set_flags(info, info.flags + "F")
    assert all(":2," in p.name for p in mh_env.messages(USER))
    server2 = server_factory(mh_env).start()
    c = plain_client(server2)
    c.user(USER)
    c.pass_(PASSWORD)
    assert c.uidl()[1] == before
    assert c.retr(5)[1] == body_lines(make_message(4))
    c.quit()


def test_one_session_per_mailbox_and_release(mh_env, server_factory, started):
    server = started()
    deliver(mh_env, USER, [make_message(1), make_message(2)])
    a = plain_client(server)
    a.user(USER)
    a.pass_(PASSWORD)
    a.dele(1)
    b = tls_client(server)
    b.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        b.pass_(PASSWORD)
    # a dropped connection (no QUIT) releases the lock and deletes nothing
    a.sock.shutdown(socket.SHUT_RDWR)
    a.sock.close()
    deadline = time.monotonic() + 10
    while True:
        b.user(USER)
        try:
            assert b.pass_(PASSWORD).startswith(b"+OK Logged in, 2 messages")
            break
        except poplib.error_proto as e:
            assert b"IN-USE" in e.args[0] and time.monotonic() < deadline
            time.sleep(0.1)
    assert len(mh_env.messages(USER)) == 2
    # SIGKILL with a session open: the lock does not survive the process
    server.kill()
    server2 = server_factory(mh_env).start()
    c = plain_client(server2)
    c.user(USER)
    assert c.pass_(PASSWORD).startswith(b"+OK Logged in, 2 messages")
    c.quit()


def test_idle_timeout_disconnects(mh_env, started):
    server = started("[pop3]\nidle_timeout = 2\n")
    c = plain_client(server)
    c.user(USER)
    c.pass_(PASSWORD)
    t0 = time.monotonic()
    line = c.file.readline()
    assert line == b"-ERR Disconnected for inactivity\r\n"
    assert c.file.readline() == b""  # closed
    assert 1.5 <= time.monotonic() - t0 < 10
    # the lock went with it
    d = plain_client(server)
    d.user(USER)
    assert d.pass_(PASSWORD).startswith(b"+OK")
    d.quit()


def test_expunged_over_imap_or_store_while_pop3_session_open(mh_env, started):
    server = started()
    keys = deliver(mh_env, USER, [make_message(i) for i in range(3)])
    c = plain_client(server)
    c.user(USER)
    c.pass_(PASSWORD)
    assert c.stat()[0] == 3
    imap_built = importlib.util.find_spec("mailhub.imapserver.factory") is not None
    assert ("imap" in server.ports) == imap_built
    if imap_built:
        import imapclient
        im = imapclient.IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=15)
        im.login(USER, PASSWORD)
        im.select_folder("INBOX")
        uids = im.search("ALL")
        assert len(uids) == 3
        im.add_flags(uids[0], [b"\\Flagged"])   # renames message 1's file
        im.delete_messages(uids[1])
        im.expunge()
        im.logout()
    else:  # IMAP not in this build yet: do what its EXPUNGE does, through the store
        from mailhub.store import MailStore
        folder = MailStore(mh_env.data_dir / "mail").folder(USER, "INBOX")
        infos = folder.scan()
        folder.set_flags(infos[0], "F")
        assert folder.remove(infos[1])
    assert c.retr(1)[1] == body_lines(make_message(0))
    with pytest.raises(poplib.error_proto, match="no longer exists"):
        c.retr(2)
    assert c.retr(3)[1] == body_lines(make_message(2))
    c.dele(2)
    c.dele(3)
    assert c.quit().startswith(b"+OK")
    left = mh_env.messages(USER)
    assert [p.name.split(":2,")[0] for p in left] == [keys[0]]
    assert left[0].name.endswith(":2,FS")  # flagged over IMAP, \Seen by the POP3 RETR
    if imap_built:
        im = imapclient.IMAPClient("127.0.0.1", port=server.port("imap"), ssl=False, timeout=15)
        im.login(USER, PASSWORD)
        im.select_folder("INBOX")
        flags = im.get_flags(im.search("ALL"))
        assert [set(f) for f in flags.values()] == [{b"\\Seen", b"\\Flagged"}]
        im.logout()


def _fetchmail(mh_env, tmp, port: int, options: str, extra_args=()) -> subprocess.CompletedProcess:
    rc = tmp / "fetchmailrc"
    mbox = tmp / "mbox"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {port} protocol pop3 timeout 20 uidl:\n"
        f'  user "{USER}" there with password "{PASSWORD}" is "nobody" here\n'
        f"  no sslcertck {options}\n"
        f'  mda "cat >> {mbox}"\n')
    rc.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "FETCHMAILHOME": str(tmp)}
    return subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", *extra_args], env=env,
                          capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="Debian fetchmail not installed")
def test_fetchmail_stls_keep_then_implicit_tls_nokeep(mh_env, started, tmp_path):
    server = started()
    msgs = [make_message(i, 2000, subject=f"fm {i}") for i in range(4)]
    msgs.append(b"Subject: fm dots\r\n\r\n.hidden line\r\n..double\r\nend\r\n")
    deliver(mh_env, USER, msgs)
    work = tmp_path / "fm"
    work.mkdir()
    mbox = work / "mbox"

    p = _fetchmail(mh_env, work, server.port("pop3"), "sslproto 'TLS1.2+' keep",
                   ["--sslproto", "TLS1.2+"])
    assert p.returncode == 0, p.stdout + p.stderr
    got = mbox.read_bytes()
    assert got.count(b"\nSubject: fm ") + got.startswith(b"Subject: fm ") == 5
    assert b"\n.hidden line\n..double\nend\n" in got  # unstuffed by fetchmail
    assert len(mh_env.messages(USER)) == 5            # keep
    # second run with keep: UIDLs already seen, nothing fetched again
    p = _fetchmail(mh_env, work, server.port("pop3"), "sslproto 'TLS1.2+' keep")
    assert p.returncode == 1, p.stdout + p.stderr     # 1 = no mail
    assert mbox.read_bytes() == got

    mbox.unlink()
    (work / ".fetchids").unlink(missing_ok=True)
    p = _fetchmail(mh_env, work, server.port("pop3s"), "ssl sslproto 'TLS1.2+' nokeep",
                   ["--ssl"])
    assert p.returncode == 0, p.stdout + p.stderr
    got = mbox.read_bytes()
    assert got.count(b"Subject: fm ") == 5
    assert mh_env.messages(USER) == []                # nokeep: deleted at QUIT


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_list_retrieve_delete(mh_env, started):
    server = started()
    msgs = [make_message(i, 1500) for i in range(2)] + [b"Subject: c\r\n\r\n.dot\r\n"]
    deliver(mh_env, USER, msgs)
    creds = ["-u", f"{USER}:{PASSWORD}", "--max-time", "20", "-sS"]
    p3 = f"pop3://127.0.0.1:{server.port('pop3')}"
    p3s = f"pop3s://127.0.0.1:{server.port('pop3s')}"

    def curl(*args):
        p = subprocess.run(["curl", *creds, *args], capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert curl(p3 + "/") == b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(msgs))
    assert curl("--ssl-reqd", "-k", p3 + "/3") == msgs[2]           # STLS, unstuffed
    assert curl("-k", p3s + "/1") == msgs[0]                       # implicit TLS
    curl("-k", p3s + "/2", "-X", "DELE", "-I")
    assert len(mh_env.messages(USER)) == 2
    assert curl("-k", p3s + "/") == b"1 %d\r\n2 %d\r\n" % (len(msgs[0]), len(msgs[2]))


def test_mail_delivered_over_smtp_is_retrieved_intact(mh_env, started):
    """End to end when SMTP is in the build: MX delivery -> store -> POP3, bytes intact."""
    if importlib.util.find_spec("mailhub.smtpserver.factory") is None:
        pytest.skip("SMTP is not in this build")
    import smtplib
    server = started()
    body = ("Subject: over smtp\r\nFrom: a@example.org\r\nTo: user@pop.test\r\n\r\n"
            ".leading dot\r\nline two\r\n")
    with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=20) as s:
        s.sendmail("a@example.org", [USER], body.encode())
    c = plain_client(server)
    c.user(USER)
    c.pass_(PASSWORD)
    deadline = time.monotonic() + 10
    while c.stat()[0] == 0:  # the session snapshot is taken at login: log in again
        assert time.monotonic() < deadline
        c.quit()
        time.sleep(0.1)
        c = plain_client(server)
        c.user(USER)
        c.pass_(PASSWORD)
    lines = c.retr(1)[1]
    assert lines[-3:] == [b"", b".leading dot", b"line two"]
    assert b"Subject: over smtp" in lines
    assert any(l.lower().startswith(b"return-path: <a@example.org>") for l in lines)
    c.quit()
