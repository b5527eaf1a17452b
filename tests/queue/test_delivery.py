"""Outbound delivery through the fake Internet: MX order, fallback, retries, bounces."""
from __future__ import annotations

import email
import email.policy

from tests.queue.conftest import (
    envelope, inject, message, queue_ids, wait_queue_empty, wait_until,
)


def _dsn_parts(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    return msg, parts


def test_mx_preference_fallback_and_implicit_mx(outbound):
    env, server, net = outbound
    inject(env, "alice@example.com", ["one@pref.test"], message("pref"))
    inject(env, "alice@example.com", ["two@down.test"], message("down"))
    inject(env, "alice@example.com", ["three@nomx.test"], message("nomx"))
    wait_queue_empty(env)
    a = net.received("mx-a")
    b = net.received("mx-b")
    # pref.test: MX 10 mx-a beats MX 20 mx-b
    assert [m["rcpts"] for m in a] == [["one@pref.test"]]
    assert "Subject: pref" in a[0]["data"]
    # down.test: MX 10 refuses connections -> MX 20; nomx.test: its A record
    assert sorted(m["rcpts"][0] for m in b) == ["three@nomx.test", "two@down.test"]
    assert all(m["mail_from"] == "alice@example.com" for m in a + b)
    # dot-stuffing survived the round trip, and opportunistic STARTTLS was used on mx-a
    assert "\r\n.leading dot\r\n" in a[0]["data"]
    assert a[0]["tls"] is True and b[0]["tls"] is False
    log = server.log()
    assert "certificate not verified" in log
    assert "delivered" in log and "mx-dead.net.test" in log


def test_4xx_is_retried_then_delivered(outbound):
    env, server, net = outbound
    qid = inject(env, "alice@example.com", ["defer1@pref.test"], message("greylist"))
    # the first attempt is refused with 451: the message stays queued with the error
    wait_until(lambda: qid in queue_ids(env) and envelope(env, qid)["attempts"] >= 1, 10,
               "a deferred attempt")
    env_rec = envelope(env, qid)
    assert env_rec["recipients"][0]["state"] == "pending"
    assert "451" in env_rec["last_error"]
    # retry schedule is 1s: the next attempt succeeds
    got = net.wait_received("mx-a", 1)
    assert got[0]["rcpts"] == ["defer1@pref.test"]
    wait_queue_empty(env)
    assert not env.messages("alice@example.com")  # no bounce


def test_5xx_bounces_to_local_sender_with_rfc3464_report(outbound):
    env, server, net = outbound
    inject(env, "alice@example.com", ["ok@pref.test", "reject-me@pref.test"],
           message("partial"))
    wait_queue_empty(env)
    got = net.received("mx-a")
    assert [m["rcpts"] for m in got] == [["ok@pref.test"]]
    [dsn_path] = wait_until(lambda: env.messages("alice@example.com"), 10, "the DSN")
    raw = dsn_path.read_bytes()
    msg, parts = _dsn_parts(raw)
    assert msg["Return-Path"] == "<>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "reject-me@pref.test" in parts[0].get_payload()
    assert parts[1].get_content_type() == "message/delivery-status"
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; reject-me@pref.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status
    assert "Remote-MTA: dns; mx-a.net.test" in status
    assert "ok@pref.test" not in status  # only the failed recipient is reported
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "Subject: partial" in parts[2].as_string()
    assert "Hello partial" not in raw.decode()  # headers only, not the body


def test_null_mx_fails_at_once(outbound):
    env, server, net = outbound
    inject(env, "alice@example.com", ["x@nullmx.test"], message("nullmx"))
    wait_queue_empty(env, 10)
    [dsn] = wait_until(lambda: env.messages("alice@example.com"), 10, "the DSN")
    text = dsn.read_text()
    assert "Status: 5.1.10" in text and "null MX" in text


def test_null_sender_is_never_bounced(outbound):
    env, server, net = outbound
    inject(env, "", ["reject-x@pref.test"], message("bounce-of-bounce"))
    wait_queue_empty(env)
    wait_until(lambda: "not bouncing a message from the null sender" in server.log(), 5,
               "the log line")
    assert queue_ids(env) == []
    assert net.received("mx-a") == [] and net.received("mx-b") == []
    assert env.messages("alice@example.com") == []


def test_remote_sender_gets_dsn_queued_from_null_sender(outbound):
    env, server, net = outbound
    inject(env, "someone@nomx.test", ["reject-y@pref.test"], message("remote"))
    got = net.wait_received("mx-b", 1)  # nomx.test's mail goes to 127.0.0.3 (mx-b)
    assert got[0]["mail_from"] == ""
    assert got[0]["rcpts"] == ["someone@nomx.test"]
    assert "message/delivery-status" in got[0]["data"]
    assert "reject-y@pref.test" in got[0]["data"]
    wait_queue_empty(env)


def test_per_recipient_state_across_domains(outbound):
    """Three domains, one defers (4xx every time): only that recipient stays queued."""
    env, server, net = outbound
    qid = inject(env, "alice@example.com",
                 ["a@pref.test", "b@nomx.test", "tempfail@down.test"], message("three"))
    net.wait_received("mx-a", 1)
    wait_until(lambda: len(net.received("mx-b")) >= 1, 10, "delivery to nomx")
    wait_until(lambda: envelope(env, qid)["attempts"] >= 1, 10, "an attempt")
    rec = envelope(env, qid)
    states = {r["addr"]: r["state"] for r in rec["recipients"]}
    assert states == {"a@pref.test": "sent", "b@nomx.test": "sent",
                      "tempfail@down.test": "pending"}
    # later attempts do not send to the others again
    wait_until(lambda: envelope(env, qid)["attempts"] >= 3, 15, "more attempts")
    assert len(net.received("mx-a")) == 1
    assert [m["rcpts"] for m in net.received("mx-b")].count(["b@nomx.test"]) == 1
