"""Smarthost with AUTH, STARTTLS policy, SMTPUTF8 and SIZE, through the fake Internet."""
from __future__ import annotations

import pytest

from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import (
    RECEIVERS, ZONE, FakeNet, envelope, inject, message, queue_ids, wait_queue_empty, wait_until,
)

RELAY = {"name": "relay", "ip": "127.0.0.6", "starttls": True,
         "auth": {"user": "mailhub", "password": "s3cret pw"}}


def _server(tmp_path, net, outbound="", **kw):
    root = tmp_path / "mh"
    root.mkdir(exist_ok=True)
    env = MailhubEnv(root, net.toml(outbound=outbound, **kw))
    env.add_user("alice@example.com", "pw")
    return env, MailhubServer(env).start()


@pytest.fixture
def relaynet(tmp_path):
    net = FakeNet(tmp_path / "net", ZONE, RECEIVERS + [RELAY]).start()
    yield net
    net.stop()


def test_smarthost_with_auth_over_starttls(tmp_path, relaynet):
    secret = tmp_path / "smarthost.secret"
    secret.write_text("s3cret pw\n")
    env, server = _server(tmp_path, relaynet, outbound=(
        f'smarthost = "127.0.0.6:{relaynet.smtp_port}"\nsmarthost_username = "mailhub"\n'
        f'smarthost_password_file = "{secret}"\n'))
    try:
        inject(env, "alice@example.com", ["x@pref.test", "y@down.test"], message("relayed"))
        [got] = relaynet.wait_received("relay", 1)
        # one transaction with both recipients, over TLS, authenticated
        assert sorted(got["rcpts"]) == ["x@pref.test", "y@down.test"]
        assert got["tls"] is True and got["auth"] == "mailhub"
        assert "Subject: relayed" in got["data"]
        wait_queue_empty(env)
        assert relaynet.received("mx-a") == [] and relaynet.received("mx-b") == []
        assert "s3cret" not in server.log()
    finally:
        server.stop()


def test_smarthost_wrong_password_defers(tmp_path, relaynet):
    secret = tmp_path / "smarthost.secret"
    secret.write_text("wrong\n")
    env, server = _server(tmp_path, relaynet, schedule='["1h"]', outbound=(
        f'smarthost = "127.0.0.6:{relaynet.smtp_port}"\nsmarthost_username = "mailhub"\n'
        f'smarthost_password_file = "{secret}"\n'))
    try:
        qid = inject(env, "alice@example.com", ["x@pref.test"], message("badauth"))
        wait_until(lambda: envelope(env, qid)["attempts"] >= 1, 10, "an attempt")
        rec = envelope(env, qid)
        assert rec["recipients"][0]["state"] == "pending"
        assert "authentication" in rec["last_error"] and "535" in rec["last_error"]
        assert relaynet.received("relay") == []
        assert env.messages("alice@example.com") == []  # deferred, not bounced
    finally:
        server.stop()


def test_require_tls_verifies_certificates(tmp_path, fakenet):
    zone_note = "mx-a presents a self-signed certificate for mx.fake.test"
    env, server = _server(tmp_path, fakenet, schedule='["1h"]', outbound="require_tls = true\n")
    try:
        # unverifiable certificate (mx-a) and no STARTTLS at all (mx-b): both deferred
        q1 = inject(env, "alice@example.com", ["a@tlsonly.test"], message("tls1"))
        q2 = inject(env, "alice@example.com", ["b@nomx.test"], message("tls2"))
        wait_until(lambda: all(envelope(env, q)["attempts"] >= 1 for q in (q1, q2)), 15,
                   "attempts")
        assert "not verified" in envelope(env, q1)["last_error"], zone_note
        assert "STARTTLS" in envelope(env, q2)["last_error"]
        assert fakenet.received("mx-a") == [] and fakenet.received("mx-b") == []
    finally:
        server.stop()


def test_smtputf8_needed_but_not_offered_fails_with_clear_dsn(outbound):
    env, server, net = outbound
    data = "From: alice@example.com\r\nTo: josé@pref.test\r\nSubject: café\r\n\r\nhé\r\n"
    # mx-a (pref.test) has no SMTPUTF8; mx-c (utf8.test) has it
    inject(env, "alice@example.com", ["josé@pref.test"], data.encode())
    inject(env, "alice@example.com", ["zoë@utf8.test"], data.encode())
    [got] = net.wait_received("mx-c", 1)
    assert "SMTPUTF8" in got["params"] and got["rcpts"] == ["zoë@utf8.test"]
    assert "Subject: café" in got["data"]
    wait_queue_empty(env)
    assert net.received("mx-a") == []
    [dsn] = wait_until(lambda: env.messages("alice@example.com"), 10, "the DSN")
    text = dsn.read_bytes().decode()
    assert "Status: 5.6.7" in text and "SMTPUTF8" in text


def test_eight_bit_body_and_size_limit(outbound):
    env, server, net = outbound
    body = "From: alice@example.com\r\nSubject: big\r\n\r\n" + "x" * 30000 + "\r\n"
    inject(env, "alice@example.com", ["big@utf8.test"], body.encode())  # mx-c: SIZE 20000
    small = b"From: alice@example.com\r\nSubject: 8bit\r\n\r\nd\xc3\xa9j\xc3\xa0 vu\r\n"
    inject(env, "alice@example.com", ["small@utf8.test"], small)
    [got] = net.wait_received("mx-c", 1)
    assert "BODY=8BITMIME" in got["params"] and "SIZE=" in got["params"]
    wait_queue_empty(env)
    [dsn] = wait_until(lambda: env.messages("alice@example.com"), 10, "the DSN")
    text = dsn.read_text()
    assert "Status: 5.3.4" in text and "big@utf8.test" in text
    assert queue_ids(env) == []


def test_require_tls_with_trusted_certificate_delivers(tmp_path, fakenet):
    env, server = _server(tmp_path, fakenet, outbound=(
        f'require_tls = true\ntls_ca_file = "{fakenet.cert}"\n'))
    try:
        inject(env, "alice@example.com", ["v@tls.test"], message("verified"))
        [got] = fakenet.wait_received("mx-a", 1)
        assert got["tls"] is True and got["rcpts"] == ["v@tls.test"]
        wait_queue_empty(env)
        assert "mx.fake.test[127.0.0.4]" in server.log() and "(TLS, verified)" in server.log()
    finally:
        server.stop()


def test_routes_override_mx_and_smarthost(tmp_path, relaynet):
    secret = tmp_path / "smarthost.secret"
    secret.write_text("s3cret pw\n")
    env, server = _server(tmp_path, relaynet, outbound=(
        f'smarthost = "127.0.0.6:{relaynet.smtp_port}"\nsmarthost_username = "mailhub"\n'
        f'smarthost_password_file = "{secret}"\n'),
        routes=f'"pref.test" = "[127.0.0.3]:{relaynet.smtp_port}"')
    try:
        inject(env, "alice@example.com", ["x@pref.test", "y@down.test"], message("routed"))
        # pref.test's MX is mx-a, but the route sends it to 127.0.0.3 (mx-b) directly
        [direct] = relaynet.wait_received("mx-b", 1)
        [relayed] = relaynet.wait_received("relay", 1)
        assert direct["rcpts"] == ["x@pref.test"] and relayed["rcpts"] == ["y@down.test"]
        wait_queue_empty(env)
        assert relaynet.received("mx-a") == []
    finally:
        server.stop()


def _hwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_message_is_streamed_intact(outbound):
    env, server, net = outbound
    line = b"x" * 70 + b"\r\n"
    body = b"".join((b"." + line if i % 7 == 0 else line) for i in range(400_000))  # ~29 MB
    data = b"From: alice@example.com\r\nSubject: large\r\n\r\n" + body + b".\r\nend\r\n"
    before = _hwm_kb(server.proc.pid)
    inject(env, "alice@example.com", ["big@pref.test"], data)
    [got] = net.wait_received("mx-a", 1, timeout=60)
    wait_queue_empty(env)
    assert got["data"].encode() == data  # dot-stuffing undone by the receiver: identical
    grown_mb = (_hwm_kb(server.proc.pid) - before) / 1024
    assert grown_mb < 15, f"peak RSS grew {grown_mb:.0f} MB for a {len(data) >> 20} MB message"
