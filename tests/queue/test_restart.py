"""The queue survives SIGKILL: queued mail is delivered after a restart, and a recipient
that already accepted a message does not get it again."""
from __future__ import annotations

import pytest

from mailhub.queue.envelope import Envelope, Recipient, new_queue_id
from mailhub.queue.spool import Spool
from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import envelope, inject, message, queue_ids, wait_queue_empty, wait_until


def test_sigkill_after_partial_delivery_sends_no_duplicate(tmp_path, fakenet):
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml(schedule='["1h"]'))
    env.add_user("alice@example.com", "pw")
    server = MailhubServer(env).start()
    qid = inject(env, "alice@example.com", ["a@pref.test", "defer1@down.test"], message("split"))
    net = fakenet
    net.wait_received("mx-a", 1)
    wait_until(lambda: envelope(env, qid)["attempts"] >= 1, 10, "the first attempt to end")
    states = {r["addr"]: r["state"] for r in envelope(env, qid)["recipients"]}
    assert states == {"a@pref.test": "sent", "defer1@down.test": "pending"}
    server.kill()

    server = MailhubServer(env).start()
    try:
        assert env.cli("queue", "flush").returncode == 0
        net.wait_received("mx-b", 1)
        wait_queue_empty(env)
        assert [m["rcpts"] for m in net.received("mx-a")] == [["a@pref.test"]]
        assert [m["rcpts"] for m in net.received("mx-b")] == [["defer1@down.test"]]
    finally:
        server.stop()


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_busy_queue(tmp_path, fakenet):
    n = 150
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml(
        schedule='["1s"]', queue="max_connections_per_domain = 5"))
    env.add_user("alice@example.com", "pw")
    spool = Spool(env.data_dir / "queue").create()
    for i in range(n):
        qid = new_queue_id()
        spool.write_message(qid, message(f"bulk{i:03d}"))
        spool.write_envelope(Envelope(id=qid, sender="alice@example.com",
                                      recipients=[Recipient("slow@pref.test")]))
    assert len(queue_ids(env)) == n
    server = MailhubServer(env).start()
    fakenet.wait_received("mx-a", 30, timeout=30)
    server.kill()
    before_kill = [m["data"].split("Subject: ")[1].split("\r\n")[0]
                   for m in fakenet.received("mx-a")]
    during = len(before_kill)
    assert during < n, "the queue drained before the kill; the test proves nothing"
    server = MailhubServer(env).start()
    try:
        wait_queue_empty(env, 60)
    finally:
        server.stop()
    subjects = [m["data"].split("Subject: ")[1].split("\r\n")[0] for m in fakenet.received("mx-a")]
    assert set(subjects) == {f"bulk{i:03d}" for i in range(n)}
    # Only messages the first run had sent can arrive twice: one in flight per connection
    # at the kill, plus those whose removal from the queue (unlink + directory fsync,
    # batched in a thread after the 250) was not yet durable. Five connections: a batch
    # lagging behind is bounded by another five or so, far below a wholesale resend.
    twice = [s for s in set(subjects) if subjects.count(s) > 1]
    assert set(twice) <= set(before_kill) | set(subjects[during:during + 5])
    assert all(subjects.count(s) == 2 for s in twice)
    assert len(twice) <= 15, (len(twice), during)


def test_sigterm_lets_transactions_finish_so_nothing_is_sent_twice(tmp_path, fakenet):
    n = 60
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml(
        schedule='["1s"]', queue="max_connections_per_domain = 4"))
    env.add_user("alice@example.com", "pw")
    spool = Spool(env.data_dir / "queue").create()
    for i in range(n):
        qid = new_queue_id()
        spool.write_message(qid, message(f"term{i:03d}"))
        spool.write_envelope(Envelope(id=qid, sender="alice@example.com",
                                      recipients=[Recipient("slow@pref.test")]))
    server = MailhubServer(env).start()
    fakenet.wait_received("mx-a", 10, timeout=30)
    server.stop()  # SIGTERM: transactions under way complete and are recorded
    delivered = len(fakenet.received("mx-a"))
    left = len(queue_ids(env))
    assert delivered < n
    assert delivered + left == n
    server = MailhubServer(env).start()
    try:
        wait_queue_empty(env, 60)
    finally:
        server.stop()
    subjects = [m["data"].split("Subject: ")[1].split("\r\n")[0] for m in fakenet.received("mx-a")]
    assert sorted(subjects) == [f"term{i:03d}" for i in range(n)]  # each exactly once
