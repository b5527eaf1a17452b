"""Submission (587 STARTTLS) and submissions (465 implicit TLS) with smtplib and swaks."""
import re
import shutil
import smtplib
import subprocess
import time

import pytest

from tests.conftest import MailhubEnv
from tests.smtp.conftest import SERVER_TOML, client, setup_env, tls_context


def test_starttls_auth_plain_and_headers_added(smtp_server, smtp_env):
    s = client(smtp_server, "submission")
    s.ehlo("laptop.example")
    assert s.has_extn("starttls") and s.has_extn("auth")  # loopback: AUTH before TLS too
    s.starttls(context=tls_context())
    s.ehlo("laptop.example")
    assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    s.login("alice@example.com", "alice-pw")  # smtplib picks PLAIN
    # MAIL as it arrives from Thunderbird; no Message-ID/Date in the message
    refused = s.sendmail("alice@example.com", ["bob@example.com"],
                         b"From: Alice <alice@example.com>\r\nSubject: hi\r\n\r\nbody\r\n",
                         mail_options=["BODY=8BITMIME", "SIZE=60"])
    assert refused == {}
    s.quit()
    [path] = smtp_env.messages("bob@example.com")
    data = path.read_bytes()
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    assert "with ESMTPSA id" in header and "using TLSv1." in header
    assert "\r\nMessage-ID: <" in header and "@mail.test.example>" in header
    assert "\r\nDate: " in header
    # added at the end of the header block, before the blank line
    assert re.search(rb"\r\nSubject: hi\r\nMessage-ID: <[^>]+>\r\nDate: [^\r]+\r\n\r\nbody\r\n$",
                     data)


def test_submissions_implicit_tls_auth_login(smtp_server, smtp_env):
    s = client(smtp_server, "submissions")
    s.ehlo("laptop.example")
    assert not s.has_extn("starttls")
    assert s.has_extn("auth")
    s.user, s.password = "bob@example.com", "bob-pw"
    code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235
    # a message that has its own Message-ID and Date keeps them (and gets no second one)
    msg = (b"Message-ID: <own@laptop.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Subject: s\r\n\r\nb\r\n")
    assert s.sendmail("bob@example.com", ["alice@example.com"], msg) == {}
    s.quit()
    [path] = smtp_env.messages("alice@example.com")
    data = path.read_bytes()
    assert data.count(b"Message-ID:") == 1 and data.count(b"\r\nDate:") == 1
    assert data.endswith(msg)


def test_auth_required_sender_checks_and_wrong_password(smtp_server, smtp_env):
    s = client(smtp_server, "submission")
    s.ehlo("laptop.example")
    assert s.docmd("MAIL FROM:<alice@example.com>") == (530, b"5.7.0 Authentication required")
    t0 = time.monotonic()
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        s.login("alice@example.com", "wrong-password")
    assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
    assert time.monotonic() - t0 >= 0.2  # [smtp] auth_failure_delay
    s.login("alice@example.com", "alice-pw")
    code, text = s.docmd("MAIL FROM:<bob@example.com>")
    assert (code, text[:5]) == (553, b"5.7.1")
    # an alias that resolves to the user is an allowed sender
    assert s.docmd("MAIL FROM:<info@example.com> SIZE=10 AUTH=<>")[0] == 250
    s.quit()
    assert "AUTH failed for [127.0.0.1] login=alice@example.com" in smtp_server.log()
    assert "wrong-password" not in smtp_server.log()


def test_plaintext_auth_needs_tls_when_loopback_exemption_is_off(tmp_path, server_factory):
    env = setup_env(MailhubEnv(tmp_path / "strict", extra_toml=SERVER_TOML.replace(
        "[smtp]", "[smtp]\nplaintext_auth_loopback = false")))
    server = server_factory(env).start()
    s = client(server, "submission")
    s.ehlo("laptop.example")
    assert not s.has_extn("auth")
    code, text = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGFsaWNlLXB3")
    assert code == 538 and text.startswith(b"5.7.11")
    s.starttls(context=tls_context())
    s.ehlo("laptop.example")
    assert s.has_extn("auth")
    assert s.login("alice@example.com", "alice-pw")[0] == 235
    s.quit()


SWAKS = shutil.which("swaks")


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SWAKS, "--timeout", "20", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(SWAKS is None, reason="swaks is installed by .ci/run")
def test_swaks_submission_starttls_auth_and_mx_pipelining(smtp_server, smtp_env):
    p = swaks("--server", f"127.0.0.1:{smtp_server.port('submission')}", "--tls",
              "--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password",
              "alice-pw", "--from", "alice@example.com", "--to", "bob@example.com",
              "--header", "Subject: swaks submission")
    assert p.returncode == 0, p.stdout + p.stderr + smtp_server.log()[-4000:]
    assert "250 2.0.0 Ok: queued as" in p.stdout
    p = swaks("--server", f"127.0.0.1:{smtp_server.port('submissions')}", "--tls-on-connect",
              "--auth", "LOGIN", "--auth-user", "bob@example.com", "--auth-password",
              "bob-pw", "--from", "bob@example.com", "--to", "alice@example.com",
              "--header", "Subject: swaks submissions")
    assert p.returncode == 0, p.stdout + p.stderr + smtp_server.log()[-4000:]
    p = swaks("--server", f"127.0.0.1:{smtp_server.port('mx')}", "--pipeline",
              "--from", "someone@remote.example", "--to", "info@example.com",
              "--header", "Subject: swaks mx")
    assert p.returncode == 0, p.stdout + p.stderr + smtp_server.log()[-4000:]
    p = swaks("--server", f"127.0.0.1:{smtp_server.port('mx')}", "--quit-after", "RCPT",
              "--from", "someone@remote.example", "--to", "victim@elsewhere.example")
    assert p.returncode != 0 and "554 5.7.1 Relay access denied" in p.stdout
    p = swaks("--server", f"127.0.0.1:{smtp_server.port('submission')}", "--tls",
              "--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password",
              "nope", "--from", "alice@example.com", "--to", "bob@example.com")
    assert p.returncode != 0 and "535 5.7.8" in p.stdout
    subjects = sorted(
        l for u in ("alice@example.com", "bob@example.com")
        for m in smtp_env.messages(u) for l in m.read_text().splitlines()
        if l.startswith("Subject: "))
    assert subjects == ["Subject: swaks mx", "Subject: swaks submission",
                        "Subject: swaks submissions"]


def test_submission_to_remote_goes_through_the_queue_end_to_end(tmp_path, server_factory):
    """alice@example.com (server A) -> friend@elsewhere.example, whose MX is server B: A's
    outbound queue relays via its smarthost setting to B's mx listener."""
    from tests.smtp.conftest import add_users
    env_b = MailhubEnv(tmp_path / "b", extra_toml=SERVER_TOML, hostname="mx.elsewhere.example")
    add_users(env_b, {"friend@elsewhere.example": "friend-pw"})
    server_b = server_factory(env_b).start()
    env_a = setup_env(MailhubEnv(tmp_path / "a", extra_toml=SERVER_TOML + (
        f'\n[outbound]\nsmarthost = "127.0.0.1:{server_b.port("mx")}"\n')))
    server_a = server_factory(env_a).start()
    s = client(server_a, "submission")
    s.ehlo("laptop.example")
    s.login("alice@example.com", "alice-pw")
    assert s.sendmail("alice@example.com", ["friend@elsewhere.example", "bob@example.com"],
                      b"Subject: to a friend\r\n\r\nhello\r\n") == {}
    s.quit()
    assert len(env_a.messages("bob@example.com")) == 1  # the local copy, at once
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not env_b.messages("friend@elsewhere.example"):
        time.sleep(0.1)
    [path] = env_b.messages("friend@elsewhere.example")
    data = path.read_bytes()
    assert data.startswith(b"Return-Path: <alice@example.com>\r\n")
    assert b"Subject: to a friend\r\n" in data and data.endswith(b"\r\n\r\nhello\r\n")
    assert data.count(b"Received: ") >= 2  # A's (ESMTPSA) and B's
    assert b"with ESMTPA id" in data or b"with ESMTPSA id" in data
    accepted = [l for l in server_a.log().splitlines() if "submission: accepted" in l]
    assert len(accepted) == 1 and "queued=-" not in accepted[0]
