"""Queue policy over time: delay warning, expiry after max_age, unknown domains, and
connection reuse with the per-domain concurrency limit."""
from __future__ import annotations

from mailhub.queue.envelope import Envelope, Recipient, new_queue_id
from mailhub.queue.spool import Spool
from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import inject, message, queue_ids, wait_queue_empty, wait_until


def _env(tmp_path, net, **kw) -> MailhubEnv:
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", net.toml(**kw))
    env.add_user("alice@example.com", "pw")
    return env


def test_delay_warning_then_expiry(tmp_path, fakenet):
    env = _env(tmp_path, fakenet, schedule='["1s"]',
               queue='delay_warning = "2s"\nmax_age = "5s"')
    server = MailhubServer(env).start()
    try:
        inject(env, "alice@example.com", ["tempfail@pref.test"], message("late"))
        wait_queue_empty(env, 30)
        msgs = wait_until(lambda: len(env.messages("alice@example.com")) >= 2 and
                          env.messages("alice@example.com"), 10, "the warning and the DSN")
        assert len(msgs) == 2  # one warning, one failure: no repeated warnings
        texts = [m.read_text() for m in msgs]
        [warn] = [t for t in texts if "Action: delayed" in t]
        assert "Will-Retry-Until:" in warn and "Status: 4.3.0" in warn
        assert "You do not need to resend" in warn
        [final] = [t for t in texts if "Action: failed" in t]
        assert "Status: 4.4.7" in final and "expired" in final and "451" in final
    finally:
        server.stop()


def test_nonexistent_domain_bounces(tmp_path, fakenet):
    env = _env(tmp_path, fakenet)
    server = MailhubServer(env).start()
    try:
        inject(env, "alice@example.com", ["x@no-such-domain.test"], message("nx"))
        [dsn] = wait_until(lambda: env.messages("alice@example.com"), 15, "the DSN")
        text = dsn.read_text()
        assert "Status: 5.1.2" in text and "does not exist" in text
        wait_queue_empty(env)
    finally:
        server.stop()


def test_connections_are_reused_within_the_domain_limit(tmp_path, fakenet):
    n = 40
    env = _env(tmp_path, fakenet, queue="max_connections_per_domain = 2")
    spool = Spool(env.data_dir / "queue").create()
    for i in range(n):
        qid = new_queue_id()
        spool.write_message(qid, message(f"reuse{i}"))
        spool.write_envelope(Envelope(id=qid, sender="alice@example.com",
                                      recipients=[Recipient(f"r{i}@pref.test")]))
    server = MailhubServer(env).start()
    try:
        fakenet.wait_received("mx-a", n)
        wait_queue_empty(env)
    finally:
        server.stop()
    conns = int((fakenet.out / "mx-a" / "connections").read_text())
    assert 1 <= conns <= 2
    assert sorted(m["rcpts"][0] for m in fakenet.received("mx-a")) == sorted(
        f"r{i}@pref.test" for i in range(n))
    assert queue_ids(env) == []


def test_dropped_cached_connection_reconnects_to_the_same_mx(tmp_path, fakenet):
    """mx-d drops the connection at the third MAIL: the queue reconnects to mx-d, it does
    not fall back to the secondary MX for that."""
    n = 6
    env = _env(tmp_path, fakenet, queue="max_connections_per_domain = 1")
    spool = Spool(env.data_dir / "queue").create()
    for i in range(n):
        qid = new_queue_id()
        spool.write_message(qid, message(f"drop{i}"))
        spool.write_envelope(Envelope(id=qid, sender="alice@example.com",
                                      recipients=[Recipient(f"d{i}@drop.test")]))
    server = MailhubServer(env).start()
    try:
        fakenet.wait_received("mx-d", n)
        wait_queue_empty(env)
    finally:
        server.stop()
    assert fakenet.received("mx-b") == []
    assert int((fakenet.out / "mx-d" / "connections").read_text()) == 3


def test_busy_greeting_falls_back_to_next_mx(outbound):
    env, server, net = outbound
    inject(env, "alice@example.com", ["x@busy.test"], message("busy"))
    [got] = net.wait_received("mx-b", 1)
    assert got["rcpts"] == ["x@busy.test"]
    wait_queue_empty(env)
    assert "421 4.3.2 too busy" in server.log()


def test_global_connection_limit_serves_every_destination(tmp_path, fakenet):
    """max_connections = 1: one connection at a time, and a destination that waits gets the
    slot as soon as the other one is done (not after the idle keep-alive)."""
    env = _env(tmp_path, fakenet, queue="max_connections = 1")
    spool = Spool(env.data_dir / "queue").create()
    for i in range(6):
        qid = new_queue_id()
        spool.write_message(qid, message(f"g{i}"))
        dom = "pref.test" if i % 2 else "nomx.test"
        spool.write_envelope(Envelope(id=qid, sender="alice@example.com",
                                      recipients=[Recipient(f"g{i}@{dom}")]))
    server = MailhubServer(env).start()
    try:
        fakenet.wait_received("mx-a", 3)
        fakenet.wait_received("mx-b", 3)
        wait_queue_empty(env)
        log = server.log()
    finally:
        server.stop()
    assert int((fakenet.out / "mx-a" / "connections").read_text()) == 1
    assert int((fakenet.out / "mx-b" / "connections").read_text()) == 1
    # one destination's connection was closed before the other one's opened
    lines = [l for l in log.splitlines() if "connected to" in l or "delivered" in l]
    assert len(lines) == 8  # 2 connections, 6 deliveries
    is_a = ["mx-a.net.test" in l for l in lines]  # pref.test's lines; the others: nomx.test
    assert is_a.count(True) == 4
    assert is_a in ([True] * 4 + [False] * 4, [False] * 4 + [True] * 4)
