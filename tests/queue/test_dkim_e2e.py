"""DKIM and end to end: smtplib submits to mailhub's submission port, the queue signs and
relays to the fake MX, and the signature verifies with dkimpy against the record that
``mailhub dns-records`` printed, served by the test DNS server."""
from __future__ import annotations

import re
import smtplib
import ssl

import dkim
import dns.resolver
import pytest

from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import RECEIVERS, ZONE, FakeNet, wait_queue_empty, wait_until

pytest.importorskip("mailhub.smtpserver.factory")


def _records(env: MailhubEnv, domain: str) -> dict[str, list[tuple[str, str]]]:
    out = env.cli("dns-records", domain).stdout
    recs: dict[str, list[tuple[str, str]]] = {}
    for line in out.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        name, _ttl, _in, rtype, value = line.split(None, 4)
        recs.setdefault(rtype, []).append((name, value))
    return recs


def _txt_value(zone_value: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', zone_value))


def _dnsfunc(port: int):
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.lifetime = 5

    def lookup(name, timeout=5):
        ans = res.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in ans)
    return lookup


def _submit(server, user: str, pw: str, rcpts: list[str], data: bytes) -> None:
    s = smtplib.SMTP("127.0.0.1", server.port("submission"), timeout=20)
    try:
        s.starttls(context=ssl._create_unverified_context())
        s.login(user, pw)
        s.sendmail(user, rcpts, data)
    finally:
        s.quit()


def test_submitted_mail_is_signed_and_verifies_against_published_record(tmp_path):
    root = tmp_path / "mh"
    root.mkdir()
    env = MailhubEnv(root)
    env.add_user("alice@example.com", "alice-pw")
    env.add_user("bob@example.com", "bob-pw")
    # `domain add` generated the key; dns-records prints what to publish
    assert (env.data_dir / "dkim" / "example.com" / "current").exists()
    recs = _records(env, "example.com")
    assert recs["MX"] == [("example.com.", "10 mail.test.example.")]
    txt = {name: _txt_value(v) for name, v in recs["TXT"]}
    assert txt["example.com."] == "v=spf1 mx -all"
    assert txt["_dmarc.example.com."].startswith("v=DMARC1; p=quarantine")
    [dkim_name] = [n for n in txt if "._domainkey." in n]
    assert txt[dkim_name].startswith("v=DKIM1; k=rsa; p=")
    srv = dict(recs["SRV"])
    for label in ("_submission", "_submissions", "_imap", "_imaps", "_pop3", "_pop3s"):
        assert f"{label}._tcp.example.com." in srv

    zone = dict(ZONE)
    zone[dkim_name] = {"TXT": [txt[dkim_name]]}
    net = FakeNet(tmp_path / "net", zone, RECEIVERS).start()
    try:
        env.write_config(net.toml())
        server = MailhubServer(env).start()
        try:
            data = (b"From: Alice <alice@example.com>\r\nTo: <far@pref.test>\r\n"
                    b"Subject: signed\r\nMessage-ID: <signed-1@example.com>\r\n\r\n"
                    b"Signed body.\r\n")
            # one remote recipient and one local one in the same submission
            _submit(server, "alice@example.com", "alice-pw",
                    ["far@pref.test", "bob@example.com"], data)
            [got] = net.wait_received("mx-a", 1)
            raw = got["data"].encode("utf-8", "surrogateescape")
            assert got["mail_from"] == "alice@example.com" and got["rcpts"] == ["far@pref.test"]
            assert raw.startswith(b"DKIM-Signature: ")
            sig = raw.split(b"\r\n\r\n")[0]
            assert b"a=rsa-sha256" in sig and b"c=relaxed/relaxed" in sig
            assert b"d=example.com" in sig and b"s=" + dkim_name.split(".")[0].encode() in sig
            assert b"Received: " in raw  # the submission's trace header is kept
            lookup = _dnsfunc(net.dns_port)
            assert dkim.verify(raw, dnsfunc=lookup)
            assert not dkim.verify(raw.replace(b"Signed body.", b"Forged body."), dnsfunc=lookup)
            wait_until(lambda: env.messages("bob@example.com"), 10, "local delivery")
            wait_queue_empty(env)

            # rotation: a new selector signs from now on (the server picks it up live)
            env.cli("dkim", "rotate", "example.com")
            new = _records(env, "example.com")
            new_txt = {n: _txt_value(v) for n, v in new["TXT"]}
            [new_name] = [n for n in new_txt if "._domainkey." in n]
            assert new_name != dkim_name
            _submit(server, "alice@example.com", "alice-pw", ["far2@pref.test"],
                    data.replace(b"signed-1", b"signed-2"))
            got2 = net.wait_received("mx-a", 2)[1]
            assert f"s={new_name.split('.')[0]};".encode() in got2["data"].encode(
                "utf-8", "surrogateescape").replace(b"\r\n ", b" ")
        finally:
            server.stop()
    finally:
        net.stop()


def test_submission_to_remote_bounces_back_to_the_user(tmp_path, fakenet):
    root = tmp_path / "mh"
    root.mkdir()
    env = MailhubEnv(root, fakenet.toml())
    env.add_user("alice@example.com", "alice-pw")
    server = MailhubServer(env).start()
    try:
        data = b"From: alice@example.com\r\nSubject: nobody there\r\n\r\nhi\r\n"
        _submit(server, "alice@example.com", "alice-pw", ["reject-z@pref.test"], data)
        [dsn] = wait_until(lambda: env.messages("alice@example.com"), 15, "the DSN")
        text = dsn.read_text()
        assert "reject-z@pref.test" in text and "Status: 5.1.1" in text
        assert "Subject: nobody there" in text
        wait_queue_empty(env)
    finally:
        server.stop()


def test_mx_alias_to_remote_address_is_forwarded_through_the_queue(tmp_path, fakenet):
    root = tmp_path / "mh"
    root.mkdir()
    env = MailhubEnv(root, fakenet.toml())
    env.add_user("alice@example.com", "alice-pw")
    env.cli("alias", "add", "team@example.com", "alice@example.com", "far@pref.test")
    server = MailhubServer(env).start()
    try:
        s = smtplib.SMTP("127.0.0.1", server.port("mx"), timeout=20)
        try:
            s.sendmail("outsider@nomx.test", ["team@example.com"],
                       b"From: outsider@nomx.test\r\nSubject: to the team\r\n\r\nhi all\r\n")
        finally:
            s.quit()
        [got] = fakenet.wait_received("mx-a", 1)
        assert got["rcpts"] == ["far@pref.test"]
        assert "Subject: to the team" in got["data"]
        assert not got["data"].startswith("DKIM-Signature")  # not our user's mail: unsigned
        wait_until(lambda: env.messages("alice@example.com"), 10, "the local copy")
        wait_queue_empty(env)
    finally:
        server.stop()
