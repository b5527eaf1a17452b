"""The MX listener against a real server with Python's smtplib and raw sockets."""
import smtplib
import socket
import time

import pytest

from tests.conftest import CORPUS
from tests.smtp.conftest import add_users, client, tls_context


def body_of(path) -> bytes:
    return path.read_bytes()


def test_ehlo_starttls_and_received_with_cipher(smtp_server, smtp_env):
    s = client(smtp_server)
    code, _ = s.ehlo("sender.example")
    assert code == 250
    for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8", "chunking",
                "starttls"):
        assert s.has_extn(ext), ext
    assert not s.has_extn("auth")
    assert s.esmtp_features["size"] == str(50 * 1024 * 1024)
    s.starttls(context=tls_context())
    s.ehlo("sender.example")
    assert not s.has_extn("starttls")
    assert not s.has_extn("auth")
    refused = s.sendmail("someone@remote.example", ["alice@example.com"],
                         b"Subject: over tls\r\n\r\nsecret\r\n")
    assert refused == {}
    s.quit()
    [msg] = smtp_env.messages("alice@example.com")
    data = body_of(msg)
    assert data.startswith(b"Return-Path: <someone@remote.example>\r\n"
                           b"Delivered-To: alice@example.com\r\n"
                           b"Received: from sender.example ([127.0.0.1])\r\n\t(using TLSv1.")
    assert b"with ESMTPS id " in data and data.endswith(b"\r\n\r\nsecret\r\n")


RELAY_TRICKS = [
    # (recipient as sent, expected reply code)
    ("victim@elsewhere.example", 554),
    ("victim@ELSEWHERE.EXAMPLE", 554),
    ("victim@elsewhere.example.", 554),
    ("victim%elsewhere.example@example.com", 550),
    ("victim%elsewhere.example@catchall.example", 550),
    ("elsewhere.example!victim@example.com", 550),
    ("elsewhere.example!victim@catchall.example", 550),
    ('"victim@elsewhere.example"@example.com', 550),
    ('"victim@elsewhere.example"@catchall.example', 550),
    ('"victim%elsewhere.example"@example.com', 550),
    ("@example.com:victim@elsewhere.example", 554),
    ("@example.com,@catchall.example:victim@elsewhere.example", 554),
    ("victim@elsewhere.example@example.com", 501),
    ("victim@[127.0.0.1]", 554),
    ("victim@[192.0.2.1]", 554),
    ("victim@[IPv6:::1]", 554),
    ("victim@example.com.elsewhere.example", 554),
    ("victim@sub.example.com", 554),
    ("nobody@example.com", 550),
    # delivered locally, never relayed:
    ("alice@example.com.", 250),
    ("ALICE@EXAMPLE.COM", 250),
    ("Alice+Tag@Example.Com", 250),
    ("info@example.com", 250),
    ("anyone@catchall.example", 250),
    ("anyone@CATCHALL.EXAMPLE.", 250),
    ("@elsewhere.example:alice@example.com", 250),
]


def test_open_relay_battery(smtp_env, server_factory):
    add_users(smtp_env, {}, {"@catchall.example": ["bob@example.com"]})
    server = server_factory(smtp_env).start()
    s = client(server)
    s.ehlo("relay-tester.example")
    results = {}
    for i, (rcpt, _expected) in enumerate(RELAY_TRICKS):
        if i % 8 == 0:
            s.rset()  # keep the error counter of one transaction low
            s.quit()
            s = client(server)
            s.ehlo("relay-tester.example")
            assert s.mail("attacker@evil.example")[0] == 250
        code, text = s.docmd(f"RCPT TO:<{rcpt}>")
        results[rcpt] = (code, text)
    s.quit()
    wrong = {r: results[r] for r, exp in RELAY_TRICKS if results[r][0] != exp}
    assert not wrong, wrong
    assert results["victim@elsewhere.example"][1] == b"5.7.1 Relay access denied"
    assert results["nobody@example.com"][1].startswith(b"5.1.1 ")
    # the accepted ones really end in local mailboxes
    accepted = [r for r, exp in RELAY_TRICKS if exp == 250]
    s = client(server)
    s.ehlo("relay-tester.example")
    refused = s.sendmail("attacker@evil.example", [f"<{r}>" if r.startswith("@") else r
                                                   for r in accepted],
                         b"Subject: relay test\r\n\r\nx\r\n")
    s.quit()
    assert refused == {}
    assert len(smtp_env.messages("alice@example.com")) == 1
    assert len(smtp_env.messages("bob@example.com")) == 1
    log = server.log()
    assert "queued=-" in log and "queued=Q" not in log
    assert "elsewhere.example" not in "".join(
        l for l in log.splitlines() if "accepted" in l and "local=" in l and "queued=-" not in l)


def test_smtputf8_addresses_and_headers_stored_unchanged(smtp_env, server_factory):
    add_users(smtp_env, {"jöran@example.com": "pw-j"})
    server = server_factory(smtp_env).start()
    s = client(server)
    s.ehlo("client.example")
    assert s.has_extn("smtputf8")
    msg = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nÄÖÜ ✓\r\n".encode()
    refused = s.sendmail("jörg@bücher.example", ["jöran@example.com"], msg,
                         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}
    s.quit()
    [path] = smtp_env.messages("jöran@example.com")
    data = path.read_bytes()
    assert data.startswith("Return-Path: <jörg@bücher.example>\r\n".encode())
    assert b"with UTF8SMTP id" in data
    assert data.endswith(msg)


def test_bdat_raw_commands(smtp_server, smtp_env):
    s = client(smtp_server)
    s.ehlo("client.example")
    assert s.has_extn("chunking")
    assert s.mail("sender@remote.example")[0] == 250
    assert s.rcpt("bob@example.com")[0] == 250
    chunk1 = b"Subject: chunked\r\n\r\nfirst part\n.not stuffed\r\n"
    chunk2 = b"\x00binary-ish \xff bytes\r\nlast line\r\n"
    s.send(f"BDAT {len(chunk1)}\r\n".encode() + chunk1)
    assert s.getreply() == (250, f"2.0.0 {len(chunk1)} octets received".encode())
    s.send(f"BDAT {len(chunk2)} LAST\r\n".encode() + chunk2)
    code, text = s.getreply()
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
    assert s.noop()[0] == 250
    s.quit()
    [path] = smtp_env.messages("bob@example.com")
    assert path.read_bytes().endswith(b"Subject: chunked\r\n\r\nfirst part\r\n.not stuffed\r\n"
                                      + chunk2)


def test_corpus_messages_roundtrip(smtp_server, smtp_env):
    files = sorted(CORPUS.glob("*.eml"))[:25]
    if not files:
        pytest.skip(f"the shared mail corpus is not next to this checkout ({CORPUS})")
    s = client(smtp_server)
    s.ehlo("client.example")
    expected = []
    for f in files:
        raw = f.read_bytes()
        crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not crlf.endswith(b"\r\n"):
            crlf += b"\r\n"
        # sent CRLF-normalised (smtplib would add a CRLF after a final bare LF: another line)
        assert s.sendmail("corpus@remote.example", ["alice@example.com"], crlf,
                          mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
        expected.append(crlf)
    s.quit()
    stored = [p.read_bytes() for p in smtp_env.messages("alice@example.com")]
    bodies = sorted(d.split(b";\r\n\t", 1)[1].split(b"\r\n", 1)[1] for d in stored)
    assert bodies == sorted(expected)


def test_limits_line_length_and_size(smtp_server):
    s = client(smtp_server)
    s.ehlo("client.example")
    assert s.docmd("NOOP", "x" * 600) == (500, b"5.5.2 Error: line too long")
    assert s.noop()[0] == 250
    code, text = s.docmd(f"MAIL FROM:<a@remote.example> SIZE={50 * 1024 * 1024 + 1}")
    assert (code, text) == (552, b"5.3.4 Message size exceeds fixed limit")
    assert s.docmd("VRFY", "alice@example.com")[0] == 252
    assert s.docmd("VRFY", "nobody@example.com")[0] == 252
    assert s.docmd("EXPN", "staff")[0] == 502
    assert s.docmd("AUTH", "PLAIN AGFAYg==")[0] == 503
    s.quit()


def test_idle_timeout_closes_with_421(smtp_server):
    """Plain session: 421 after [smtp] idle_timeout. A client that opens the submissions port
    and never starts TLS (so our 421 cannot be flushed) is dropped too."""
    tls_sock = socket.create_connection(("127.0.0.1", smtp_server.port("submissions")),
                                        timeout=15)
    sock = socket.create_connection(("127.0.0.1", smtp_server.port("mx")), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    t0 = time.monotonic()
    line = f.readline()
    assert line.startswith(b"421 4.4.2 ") and b"timeout" in line
    assert 2.5 < time.monotonic() - t0 < 8
    assert f.readline() == b""  # closed
    sock.close()
    try:
        while tls_sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    assert time.monotonic() - t0 < 12  # idle_timeout (3 s) + the abort grace (5 s)
    tls_sock.close()


def test_starttls_injection_is_discarded(smtp_server):
    """Commands pipelined after STARTTLS in plaintext must not run inside TLS."""
    import ssl
    sock = socket.create_connection(("127.0.0.1", smtp_server.port("mx")), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO x.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\nNOOP\r\n")
    assert f.readline().startswith(b"220 2.0.0")
    tls = tls_context().wrap_socket(sock, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"NOOP\r\n")
    # exactly one reply: ours; the injected NOOP was dropped
    assert tf.readline() == b"250 2.0.0 Ok\r\n"
    tls.sendall(b"QUIT\r\n")
    assert tf.readline().startswith(b"221")
    tls.close()


def test_store_error_452_and_server_survives(smtp_server, smtp_env):
    md = smtp_env.maildir("alice@example.com")
    (md / "tmp").rename(md / "tmp.away")
    (md / "tmp").write_text("not a directory")  # open() in tmp/ now fails, even as root
    try:
        s = client(smtp_server)
        s.ehlo("client.example")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", ["alice@example.com", "bob@example.com"],
                       b"Subject: x\r\n\r\ny\r\n")
        assert e.value.smtp_code == 452 and e.value.smtp_error.startswith(b"4.3.1")
        # nothing half-delivered: the other recipient's copy is not visible either
        assert smtp_env.messages("bob@example.com") == []
        # a single recipient (streamed straight into the Maildir when it can be) too
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("a@remote.example", ["alice@example.com"], b"Subject: x\r\n\r\ny\r\n")
        assert e.value.smtp_code == 452
    finally:
        (md / "tmp").unlink()
        (md / "tmp.away").rename(md / "tmp")
    assert s.sendmail("a@remote.example", ["alice@example.com"], b"Subject: x\r\n\r\ny\r\n") == {}
    s.quit()
    assert len(smtp_env.messages("alice@example.com")) == 1
    assert "store error" in smtp_server.log()


def test_idle_client_sees_smtp_delivery_at_once(smtp_server, smtp_env):
    """The MDA's commit notifies the store's events: an IMAP IDLE session learns at once."""
    imapclient = pytest.importorskip("imapclient")
    if "imap" not in smtp_server.ports:
        pytest.skip("no IMAP listener in this build")
    imap = imapclient.IMAPClient("127.0.0.1", port=smtp_server.port("imap"), ssl=False,
                                 timeout=10)
    imap.login("alice@example.com", "alice-pw")
    imap.select_folder("INBOX")
    imap.idle()
    try:
        s = client(smtp_server)
        s.ehlo("client.example")
        t0 = time.monotonic()
        assert s.sendmail("a@remote.example", ["alice@example.com"],
                          b"Subject: push\r\n\r\nx\r\n") == {}
        s.quit()
        responses = imap.idle_check(timeout=15)  # returns as soon as something is pushed
        elapsed = time.monotonic() - t0
    finally:
        imap.idle_done()
        imap.logout()
    assert any(r[1] == b"EXISTS" for r in responses if len(r) > 1), responses
    assert elapsed < 10  # pushed, not found by a poll at the end of the wait



def test_raw_data_dots_bare_lf_long_lines_and_8bit(smtp_server, smtp_env):
    """What a sloppy client puts on the wire ends up in the Maildir as CRLF, unstuffed."""
    s = client(smtp_server)
    s.ehlo("client.example")
    assert s.mail("sloppy@remote.example")[0] == 250
    assert s.rcpt("alice@example.com")[0] == 250
    assert s.docmd("DATA")[0] == 354
    long_line = b"L" * 5000
    s.send(b"Subject: raw\n\n..leading dot\nbare lf line\r\n" + long_line + b"\n"
           b"8bit: \xc3\xa4\xff\r\n.\n"  # "." after bare LF is not the end
           b"...\r\n.\r\n")
    code, text = s.getreply()
    assert code == 250, text
    s.quit()
    [path] = smtp_env.messages("alice@example.com")
    data = path.read_bytes()
    assert data.endswith(b"Subject: raw\r\n\r\n.leading dot\r\nbare lf line\r\n" + long_line
                         + b"\r\n8bit: \xc3\xa4\xff\r\n\r\n..\r\n")


def test_client_vanishing_mid_data_leaves_nothing_behind(smtp_server, smtp_env):
    for rcpts in (["alice@example.com"], ["alice@example.com", "bob@example.com"]):
        sock = socket.create_connection(("127.0.0.1", smtp_server.port("mx")), timeout=10)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"HELO x.example\r\nMAIL FROM:<a@remote.example>\r\n"
                     + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n")
        for _ in range(3 + len(rcpts)):
            assert f.readline()[:1] in (b"2", b"3")
        sock.sendall(b"Subject: cut\r\n\r\n" + b"z" * 500000)  # past the in-memory limit
        time.sleep(0.3)
        sock.close()
    deadline = time.monotonic() + 5
    # tmp/ may hold the empty files the server creates ahead of time (store/tmppool.py):
    # what must not be left is any byte of the cut message
    leftovers = lambda: ([p for p in (smtp_env.maildir("alice@example.com") / "tmp").iterdir()
                          if p.stat().st_size > 0]
                         + list((smtp_env.data_dir / "spool").iterdir()))
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == []
    assert smtp_env.messages("alice@example.com") == []
    assert smtp_env.messages("bob@example.com") == []


def test_tmp_files_created_ahead_are_used_and_removed_at_stop(smtp_env, server_factory):
    """The server creates tmp/ files ahead of time (store/tmppool.py): messages land in new/
    complete, and a clean stop leaves tmp/ empty."""
    server = server_factory(smtp_env).start()
    tmp = smtp_env.maildir("alice@example.com") / "tmp"
    bodies = []
    for i in range(5):
        with client(server) as c:
            body = f"Subject: pooled {i}\r\n\r\nbody {i}\r\n"
            c.sendmail("a@remote.example", ["alice@example.com"], body)
            bodies.append(body.encode())
    got = sorted(p.read_bytes() for p in smtp_env.messages("alice@example.com"))
    assert len(got) == 5
    for body in bodies:
        assert sum(g.endswith(body) for g in got) == 1
    assert all(p.stat().st_size == 0 for p in tmp.iterdir())  # only empty pooled files
    assert any(True for _ in tmp.iterdir())  # the pool is in use
    assert server.stop() in (0, -15)
    assert list(tmp.iterdir()) == []
