"""Bad input around the queue: a remote server that does not speak SMTP, a corrupt envelope
in the spool, an empty injected message. Nothing queued is lost."""
from __future__ import annotations

from mailhub.queue.envelope import Envelope, Recipient, new_queue_id
from mailhub.queue.spool import Spool
from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import inject, message, queue_ids, wait_queue_empty, wait_until


def test_garbage_replies_move_to_the_next_mx(outbound):
    env, server, net = outbound
    inject(env, "alice@example.com", ["x@garbage.test"], message("garbage"))
    [got] = net.wait_received("mx-b", 1)
    assert got["rcpts"] == ["x@garbage.test"] and "Subject: garbage" in got["data"]
    wait_queue_empty(env)
    assert "protocol error: malformed reply line" in server.log()
    assert env.messages("alice@example.com") == []  # delivered, no bounce


def test_corrupt_envelope_is_reported_and_the_rest_delivered(tmp_path, fakenet):
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml())
    spool = Spool(env.data_dir / "queue").create()
    qid = new_queue_id()
    spool.write_message(qid, message("good"))
    spool.write_envelope(Envelope(id=qid, sender="", recipients=[Recipient("g@pref.test")]))
    spool.write_message("BAD1", b"Subject: bad\r\n\r\nx\r\n")
    (spool.env_dir / "BAD1.json").write_text("{not json")
    server = MailhubServer(env).start()
    try:
        net_got = fakenet.wait_received("mx-a", 1)
        assert net_got[0]["rcpts"] == ["g@pref.test"]
        wait_until(lambda: queue_ids(env) == ["BAD1"], 10, "only the corrupt one left")
        assert "unreadable envelope BAD1.json" in server.log()
        # the corrupt entry is left for the administrator, its message file kept
        assert (spool.msg_dir / "BAD1").exists()
        listing = env.cli("queue", "list").stdout
        assert "unreadable envelope: BAD1.json" in listing
    finally:
        server.stop()


def test_inject_refuses_an_empty_message(mh_env):
    p = mh_env.cli("queue", "inject", "--from", "a@b.test", "c@d.test", input="", check=False)
    assert p.returncode == 1 and "no message on stdin" in p.stderr
    assert queue_ids(mh_env) == []
