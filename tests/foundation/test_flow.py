"""The whole chain in one server: a mail client submits (587, STARTTLS + AUTH), the MDA
delivers into the recipient's Maildir, and the recipient reads the same message over IMAP
and POP3; mail from outside arrives on the MX listener for an alias."""
import imaplib
import poplib
import smtplib
import ssl

import pytest

from tests.conftest import MailhubServer

pytest.importorskip("mailhub.smtpserver")
pytest.importorskip("mailhub.imapserver")
pytest.importorskip("mailhub.pop3server")


def test_submission_to_imap_and_pop3(mh_env):
    mh_env.add_user("alice@example.com", "alice-pw")
    mh_env.add_user("bob@example.com", "bob-pw")
    mh_env.cli("alias", "add", "team@example.com", "bob@example.com")
    server = MailhubServer(mh_env).start()
    try:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        body = "Subject: flow test\r\nFrom: alice@example.com\r\nTo: bob@example.com\r\n\r\nhello bob\r\n"
        with smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=20) as s:
            s.starttls(context=tls)
            s.login("alice@example.com", "alice-pw")
            refused = s.sendmail("alice@example.com", ["bob@example.com"], body)
            assert refused == {}
        with smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=20) as s:
            s.sendmail("someone@elsewhere.org", ["TEAM@example.com"],
                       "Subject: from outside\r\n\r\nhi team\r\n")

        # IMAP: both messages, trace headers, the body unchanged
        im = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=20)
        im.starttls(ssl_context=tls)
        im.login("bob@example.com", "bob-pw")
        typ, data = im.select("INBOX")
        assert typ == "OK" and data == [b"2"]
        typ, data = im.fetch("1:2", "(BODY.PEEK[])")
        msgs = [part[1] for part in data if isinstance(part, tuple)]
        first, second = msgs
        assert first.startswith(b"Return-Path: <alice@example.com>\r\nDelivered-To: bob@example.com\r\n")
        assert b"\r\nReceived: from " in first and b"Subject: flow test\r\n" in first
        assert first.endswith(b"\r\n\r\nhello bob\r\n")
        assert b"Message-ID: " in first and b"\r\nDate: " in first  # added at submission
        assert second.startswith(b"Return-Path: <someone@elsewhere.org>\r\nDelivered-To: bob@example.com\r\n")
        assert second.endswith(b"hi team\r\n")
        im.logout()

        # POP3 sees the same two messages, byte for byte
        p = poplib.POP3("127.0.0.1", server.port("pop3"), timeout=20)
        p.stls(context=tls)
        p.user("bob@example.com")
        p.pass_("bob-pw")
        assert p.stat()[0] == 2
        got = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
        assert got == first
        p.quit()
        log = server.log()
        assert "alice-pw" not in log and "bob-pw" not in log
    finally:
        server.stop()
