"""The ESMTP state machine in process (StringTransport + Clock): ordering, limits, errors."""
import base64

from mailhub.store.interfaces import StoreError
from tests.smtp.conftest import FakeQueue


def ehlo(s):
    s.send("EHLO client.example\r\n")
    return s.take()


def plain(user, pw):
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


def test_pipelined_replies_stay_in_order_while_delivery_is_pending(smtp_unit):
    s = smtp_unit.session()
    ehlo(s)
    burst = ("MAIL FROM:<x@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
             "Subject: one\r\n\r\n1\r\n.\r\n"
             "MAIL FROM:<y@remote.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
             "Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n")
    s.send(burst)
    assert s.codes() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert len(smtp_unit.mda.calls) == 1  # the second message is not even looked at yet
    smtp_unit.mda.calls[0][3].callback([("alice@example.com", "k1")])
    out = s.codes()
    assert out[0].startswith("250 2.0.0 Ok: queued as ")
    assert out[1:] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    sender, rcpts, data, d = smtp_unit.mda.calls[1]
    assert (sender, rcpts) == ("y@remote.example", ["bob@example.com"])
    assert data.endswith(b"Subject: two\r\n\r\n2\r\n")
    d.callback([("bob@example.com", "k2")])
    out = s.codes()
    assert out[0].startswith("250 2.0.0 Ok: queued as ") and out[1] == "221 2.0.0 Bye"
    assert s.transport.disconnecting


def test_received_header_and_message_as_sent(smtp_unit):
    smtp_unit.mda.auto = lambda call: [(call[1][0], "k")]
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@remote.example>\r\nRCPT TO:<Alice@EXAMPLE.com>\r\nDATA\r\n")
    s.send("Subject: t\n\n..dot\nbare lf\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued as")
    sender, rcpts, data, _ = smtp_unit.mda.calls[0]
    assert rcpts == ["alice@example.com"]
    head, _, rest = data.partition(b"Subject: t")
    assert head.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby mx.test.example "
                           b"(mailhub) with ESMTP id ")
    assert b"for <Alice@EXAMPLE.com>;" in head
    assert rest == b"\r\n\r\n.dot\r\nbare lf\r\n"
    assert b"Message-ID" not in data  # MX does not add it


def test_command_line_too_long_then_session_goes_on(smtp_unit):
    s = smtp_unit.session()
    s.send("NOOP " + "x" * 600 + "\r\n")
    assert s.codes() == ["500 5.5.2 Error: line too long"]
    s.send("NOOP " + "y" * 20000)  # no line end yet: discarded, not buffered
    assert len(s.proto._buf) == 0
    s.send("zzz\r\nNOOP\r\n")
    assert s.codes() == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]


def test_too_many_errors_disconnects_with_421(make_unit):
    u = make_unit("[smtp]\nmax_errors = 3\n")
    s = u.session()
    s.send("BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    out = s.codes()
    assert out[:2] == ["500 5.5.2 Error: command not recognized"] * 2
    assert out[-1] == "421 4.7.0 mx.test.example Error: too many errors"
    assert "250 2.0.0 Ok" not in out
    assert s.transport.disconnecting


def test_max_recipients(make_unit):
    u = make_unit("[smtp]\nmax_recipients = 2\n")
    s = u.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\n" + "RCPT TO:<alice@example.com>\r\n" * 3)
    assert s.codes() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                         "452 4.5.3 Error: too many recipients"]
    assert s.proto.errors == 0


def test_sequence_errors(smtp_unit):
    s = smtp_unit.session()
    s.send("MAIL FROM:<a@b.example>\r\n")
    assert s.codes() == ["503 5.5.1 Error: send HELO/EHLO first"]
    ehlo(s)
    s.send("RCPT TO:<alice@example.com>\r\nDATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n"
           "MAIL FROM:<a@b.example>\r\nVRFY alice\r\nVRFY nobody\r\nEXPN list\r\nHELP\r\n"
           "AUTH PLAIN\r\nRSET\r\nNOOP\r\n")
    assert s.codes() == [
        "503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need MAIL command",
        "250 2.1.0 Ok", "554 5.5.1 Error: no valid recipients",
        "503 5.5.1 Error: nested MAIL command",
        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery",
        "502 5.5.1 Error: EXPN not available",
        s_help(), "503 5.5.1 Error: authentication not enabled", "250 2.0.0 Ok", "250 2.0.0 Ok"]


def s_help():
    return ("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP "
            "STARTTLS AUTH; see RFC 5321")


def test_mx_ehlo_has_no_auth_and_lists_extensions(smtp_unit):
    s = smtp_unit.session()
    out = ehlo(s)
    for ext in ("PIPELINING", "SIZE 52428800", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8",
                "CHUNKING"):
        assert f"250-{ext}\r\n" in out or f"250 {ext}\r\n" in out
    assert "AUTH" not in out


def test_size_parameter_and_actual_size_enforced(make_unit):
    u = make_unit("[smtp]\nmax_message_size = 1000\n")
    u.mda.auto = lambda call: [(call[1][0], "k")]
    s = u.session()
    ehlo(s)
    s.send("MAIL FROM:<a@r.example> SIZE=1001\r\n")
    assert s.codes() == ["552 5.3.4 Message size exceeds fixed limit"]
    s.send("MAIL FROM:<a@r.example> SIZE=500\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    s.send("x" * 1200 + "\r\n.\r\n")
    assert s.codes()[-1] == "552 5.3.4 Message size exceeds fixed limit"
    assert u.mda.calls == []
    assert list(u.factory().spool_dir.iterdir()) == []
    s.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nsmall\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")


def test_store_error_gives_452_and_session_survives(smtp_unit):
    smtp_unit.mda.auto = lambda call: StoreError("No space left on device")
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nx\r\n.\r\n")
    assert s.codes()[-1] == "452 4.3.1 Insufficient system storage, try again later"
    smtp_unit.mda.auto = lambda call: [(call[1][0], "k")]
    s.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nx\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")


def test_bdat_chunks_binary_and_pipelined(smtp_unit):
    smtp_unit.mda.auto = lambda call: [(call[1][0], "k")]
    s = smtp_unit.session()
    ehlo(s)
    c1 = b"Subject: b\r\n\r\nline with . and\nbare lf\r"
    c2 = b"\nend\r\n"
    s.send(b"MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\n"
           + f"BDAT {len(c1)}\r\n".encode() + c1 + f"BDAT {len(c2)} LAST\r\n".encode() + c2
           + b"NOOP\r\n")
    out = s.codes()
    assert out[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok", f"250 2.0.0 {len(c1)} octets received"]
    assert out[3].startswith("250 2.0.0 Ok: queued as") and out[4] == "250 2.0.0 Ok"
    data = smtp_unit.mda.calls[0][2]
    assert data.endswith(b"Subject: b\r\n\r\nline with . and\r\nbare lf\r\nend\r\n")


def test_bdat_without_transaction_consumes_its_chunk(smtp_unit):
    s = smtp_unit.session()
    ehlo(s)
    s.send(b"BDAT 9\r\nNOOP\r\nXYZBDAT 0 LAST\r\nNOOP\r\n")
    assert s.codes() == ["503 5.5.1 Error: need MAIL command",
                         "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]


def test_idle_timeout(make_unit):
    u = make_unit("[smtp]\nidle_timeout = 30\n")
    s = u.session()
    u.clock.advance(20)
    s.send("NOOP\r\n")
    u.clock.advance(20)
    assert s.codes() == ["250 2.0.0 Ok"] and not s.transport.disconnecting
    u.clock.advance(11)
    assert s.codes() == ["421 4.4.2 mx.test.example Error: timeout exceeded"]
    assert s.transport.disconnecting


def test_connection_cap_per_ip(make_unit):
    from tests.smtp.conftest import Session
    u = make_unit("[smtp]\nmax_connections_per_ip = 2\n")
    a, b = u.session(), u.session()
    c = Session(u.factory())
    assert c.take().startswith("421 4.7.0 mx.test.example Error: too many connections")
    c.lose()
    other = Session(u.factory(), ip="192.0.2.9")
    assert other.take().startswith("220 ")
    a.lose()
    d = Session(u.factory())
    assert d.take().startswith("220 ")
    assert u.factory().per_ip["127.0.0.1"] == 2
    # the slot is free as soon as the server says 221, before the socket is closed
    b.send("QUIT\r\n")
    assert b.codes() == ["221 2.0.0 Bye"] and b.transport.disconnecting
    assert u.factory().per_ip["127.0.0.1"] == 1
    e = Session(u.factory())
    assert e.take().startswith("220 ")
    b.lose()
    assert u.factory().per_ip["127.0.0.1"] == 2


def test_submission_requires_auth_and_checks_sender(smtp_unit):
    smtp_unit.mda.auto = lambda call: [(call[1][0], "k")]
    s = smtp_unit.session("submission")
    out = ehlo(s)
    assert "250-AUTH PLAIN LOGIN\r\n" in out  # loopback: plaintext AUTH allowed
    s.send("MAIL FROM:<alice@example.com>\r\n")
    assert s.codes() == ["530 5.7.0 Authentication required"]
    s.send(f"AUTH PLAIN {plain('alice@example.com', 'alice-pw')}\r\n")
    assert s.codes() == ["235 2.7.0 Authentication successful"]
    s.send("MAIL FROM:<bob@example.com>\r\nMAIL FROM:<>\r\nMAIL FROM:<info@example.com> "
           "SIZE=10 AUTH=<>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n")
    out = s.codes()
    assert out[:2] == ["553 5.7.1 Sender address rejected: not owned by user alice@example.com"] * 2
    assert out[2:5] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert out[5].startswith("250 2.0.0 Ok: queued")
    data = smtp_unit.mda.calls[0][2]
    header = data.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPA id" in header
    assert b"\r\nMessage-ID: <" in header and b"\r\nDate: " in header
    assert data.endswith(b"\r\n\r\nb\r\n")


def test_submission_auth_login_outlook_style_and_subaddress_sender(smtp_unit):
    s = smtp_unit.session("submission")
    ehlo(s)
    user = base64.b64encode(b"bob@example.com").decode()
    s.send(f"AUTH LOGIN {user}\r\n")
    assert s.codes() == ["334 UGFzc3dvcmQ6"]
    s.send(base64.b64encode(b"bob-pw").decode() + "\r\n")
    assert s.codes() == ["235 2.7.0 Authentication successful"]
    s.send("MAIL FROM:<Bob+lists@Example.COM> SIZE=100 AUTH=<>\r\n")
    assert s.codes() == ["250 2.1.0 Ok"]


def test_wrong_password_delayed_535_then_throttled(make_unit):
    u = make_unit("[smtp]\nauth_failure_delay = 2.0\n")
    s = u.session("submission")
    ehlo(s)
    s.send(f"AUTH PLAIN {plain('alice@example.com', 'wrong')}\r\nNOOP\r\n")
    assert s.take() == ""  # nothing until the delay has passed
    u.clock.advance(1.9)
    assert s.take() == ""
    u.clock.advance(0.2)
    assert s.codes() == ["535 5.7.8 Authentication credentials invalid", "250 2.0.0 Ok"]
    # LOGIN without initial response, and cancelling with "*"
    s.send("AUTH LOGIN\r\n")
    assert s.codes() == ["334 VXNlcm5hbWU6"]
    s.send("*\r\n")
    assert s.codes() == ["501 5.7.0 Authentication aborted"]
    s.send("AUTH PLAIN !!!notbase64\r\nAUTH CRAM-MD5\r\n")
    assert s.codes() == ["501 5.5.2 Cannot decode response",
                         "504 5.5.4 Unrecognized authentication type"]
    for _ in range(12):
        u.ctx.throttle.failure("127.0.0.1", "x")
    s.send(f"AUTH PLAIN {plain('alice@example.com', 'alice-pw')}\r\n")
    u.clock.advance(20)
    assert s.codes() == ["454 4.7.0 Too many authentication failures, try again later"]
    assert s.proto.user is None


def test_plaintext_auth_refused_off_loopback(make_unit):
    u = make_unit()
    s = u.session("submission", ip="192.0.2.7")
    out = ehlo(s)
    assert "AUTH" not in out
    s.send(f"AUTH PLAIN {plain('alice@example.com', 'alice-pw')}\r\n")
    assert s.codes() == ["538 5.7.11 Encryption required for requested authentication mechanism"]
    assert s.proto.user is None
    u2 = make_unit("[smtp]\nplaintext_auth_loopback = false\n")
    s2 = u2.session("submission")
    assert "AUTH" not in ehlo(s2)
    s2.send("AUTH LOGIN\r\n")
    assert s2.codes()[0].startswith("538 5.7.11")


def test_remote_recipient_without_queue_is_451_and_with_queue_enqueued(smtp_unit):
    smtp_unit.mda.auto = lambda call: [(a, "k") for a in call[1]]
    s = smtp_unit.session("submission")
    ehlo(s)
    s.send(f"AUTH PLAIN {plain('alice@example.com', 'alice-pw')}\r\n")
    s.take()
    s.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<friend@elsewhere.example>\r\n")
    assert s.codes()[-1] == "451 4.3.0 Cannot relay now: outbound queue unavailable"
    s.send("RSET\r\n")
    s.take()
    smtp_unit.ctx.queue = FakeQueue()  # the queue may appear while the server runs
    s.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<friend@elsewhere.example>\r\n"
           "RCPT TO:<bob@example.com>\r\nDATA\r\nSubject: q\r\n\r\nhi\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")
    sender, rcpts, data, dkim = smtp_unit.ctx.queue.calls[0]
    assert (sender, rcpts, dkim) == ("alice@example.com", ["friend@elsewhere.example"],
                                     "example.com")
    assert data == smtp_unit.mda.calls[0][2] and data.endswith(b"\r\n\r\nhi\r\n")
    assert list(smtp_unit.factory("submission").spool_dir.iterdir()) == []


def test_mx_alias_forwarding_outside_goes_to_queue_without_dkim(smtp_unit):
    smtp_unit.ctx.queue = FakeQueue()
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<fwd@example.com>\r\nDATA\r\nhi\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")
    assert smtp_unit.ctx.queue.calls[0][1:2] == (["someone@elsewhere.example"],)
    assert smtp_unit.ctx.queue.calls[0][3] is None
    assert smtp_unit.mda.calls == []


def test_large_message_spills_to_spool_file_and_is_removed(smtp_unit):
    seen = {}

    def auto(call):
        seen["spool"] = list(smtp_unit.factory().spool_dir.iterdir())
        return [(call[1][0], "k")]
    smtp_unit.mda.auto = auto
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    line = b"z" * 998 + b"\r\n"
    for _ in range(600):  # ~600 KB, past the in-memory limit
        s.send(line)
    s.send(".\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")
    assert len(seen["spool"]) == 1
    assert smtp_unit.mda.calls[0][2].count(line) == 600
    assert list(smtp_unit.factory().spool_dir.iterdir()) == []


def test_disconnect_mid_data_leaves_no_spool_file(smtp_unit):
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    s.send(b"Subject: s\r\n\r\n" + (b"y" * 998 + b"\r\n") * 400)
    assert len(list(smtp_unit.factory().spool_dir.iterdir())) == 1
    s.lose()
    assert list(smtp_unit.factory().spool_dir.iterdir()) == []
    assert smtp_unit.mda.calls == []


def test_idle_timer_does_not_fire_while_delivery_is_pending(make_unit):
    u = make_unit("[smtp]\nidle_timeout = 30\n")
    s = u.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nx\r\n.\r\n")
    s.take()
    u.clock.advance(45)  # the store is slow
    assert s.take() == "" and not s.transport.disconnecting
    u.mda.calls[0][3].callback([("alice@example.com", "k")])
    assert s.codes()[0].startswith("250 2.0.0 Ok: queued")
    u.clock.advance(31)
    assert s.codes() == ["421 4.4.2 mx.test.example Error: timeout exceeded"]


def test_large_pipelined_burst_is_answered_in_order_and_fast(smtp_unit):
    import time
    s = smtp_unit.session()
    ehlo(s)
    burst = "".join(f"NOOP {i}\r\nRSET\r\n" for i in range(20000)) + "QUIT\r\n"
    t0 = time.monotonic()
    for i in range(0, len(burst), 65536):  # as the socket delivers it
        s.send(burst[i:i + 65536])
    elapsed = time.monotonic() - t0
    out = s.codes()
    assert len(out) == 40001 and out[-1] == "221 2.0.0 Bye"
    assert set(out[:-1]) == {"250 2.0.0 Ok"}
    assert elapsed < 10


def test_directory_failure_is_a_temporary_error_not_a_dropped_connection(smtp_unit, monkeypatch):
    import sqlite3
    s = smtp_unit.session()
    ehlo(s)

    def broken(address):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(smtp_unit.directory, "resolve", broken)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<alice@example.com>\r\nNOOP\r\n")
    assert s.codes() == ["250 2.1.0 Ok", "451 4.3.0 Error: temporary local problem, try again later",
                         "250 2.0.0 Ok"]
    assert not s.transport.disconnecting


def test_bdat_over_the_size_limit(make_unit):
    u = make_unit("[smtp]\nmax_message_size = 1000\n")
    u.mda.auto = lambda call: [(call[1][0], "k")]
    s = u.session()
    ehlo(s)
    big = b"x" * 1500
    s.send(b"MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nBDAT 1500\r\n" + big
           + b"BDAT 3 LAST\r\nend" + b"NOOP\r\n")
    assert s.codes() == ["250 2.1.0 Ok", "250 2.1.5 Ok",
                         "552 5.3.4 Message size exceeds fixed limit",
                         "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
    assert u.mda.calls == [] and list(u.factory().spool_dir.iterdir()) == []


def test_mail_loop_is_refused_by_hop_count(smtp_unit):
    smtp_unit.mda.auto = lambda call: [(call[1][0], "k")]
    s = smtp_unit.session()
    ehlo(s)
    hops = "".join(f"Received: from hop{i}.example by x; date\r\n" for i in range(51))
    s.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n" + hops
           + "Subject: loop\r\n\r\nx\r\n.\r\n")
    assert s.codes()[-1] == "554 5.4.6 Too many hops: mail forwarding loop"
    assert smtp_unit.mda.calls == []
    hops = "".join(f"Received: from hop{i}.example by x; date\r\n" for i in range(50))
    s.send("MAIL FROM:<a@r.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n" + hops
           + "Subject: fine\r\n\r\nx\r\n.\r\n")
    assert s.codes()[-1].startswith("250 2.0.0 Ok: queued")


def test_single_local_recipient_streams_straight_into_the_maildir(smtp_unit):
    from mailhub.mda import DeliveryAgent
    smtp_unit.store.create_user("alice@example.com")
    smtp_unit.store.create_user("bob@example.com")
    smtp_unit.ctx.mda = DeliveryAgent(smtp_unit.store, smtp_unit.directory, reactor=smtp_unit.clock)
    tmp = smtp_unit.store.user_dir("alice@example.com") / "tmp"
    spool = smtp_unit.factory().spool_dir
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<info@example.com>\r\nDATA\r\n")
    s.send(b"Subject: direct\r\n\r\n" + (b"q" * 998 + b"\r\n") * 400)
    [f] = list(tmp.iterdir())
    assert list(spool.iterdir()) == []  # no spool copy, even past the memory limit
    s.lose()
    assert list(tmp.iterdir()) == []
    # two recipients: the spool path
    s = smtp_unit.session()
    ehlo(s)
    s.send("MAIL FROM:<x@r.example>\r\nRCPT TO:<alice@example.com>\r\n"
           "RCPT TO:<bob@example.com>\r\nDATA\r\n")
    s.send(b"Subject: spooled\r\n\r\n" + (b"q" * 998 + b"\r\n") * 400)
    assert list(tmp.iterdir()) == [] and len(list(spool.iterdir())) == 1
    s.lose()
    assert list(spool.iterdir()) == []
