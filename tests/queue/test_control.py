"""``mailhub queue list|flush|remove`` against a running server (no restart) and offline."""
from __future__ import annotations

from tests.conftest import MailhubEnv, MailhubServer
from tests.queue.conftest import envelope, inject, message, queue_ids, wait_until


def test_list_flush_remove_on_running_server(tmp_path, fakenet):
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml(schedule='["1h"]'))
    env.add_user("alice@example.com", "pw")
    server = MailhubServer(env).start()
    try:
        qid = inject(env, "alice@example.com", ["tempfail@pref.test"], message("stuck"))
        wait_until(lambda: envelope(env, qid)["attempts"] >= 1, 10, "the first attempt")
        out = env.cli("queue", "list").stdout
        assert qid in out and "from=<alice@example.com>" in out and "attempts=1" in out
        assert "tempfail@pref.test" in out and "451" in out and "1 message(s) queued" in out

        bad = env.cli("queue", "remove", "NOSUCHID", check=False)
        assert bad.returncode == 1
        assert "no queued message with id NOSUCHID" in bad.stderr

        # flush: the running server retries at once, though the schedule says 1 hour
        flushed = env.cli("queue", "flush")
        assert "1 message(s)" in flushed.stdout
        wait_until(lambda: envelope(env, qid)["attempts"] >= 2, 10, "the flushed attempt")

        assert env.cli("queue", "remove", qid).stdout.strip() == f"removed {qid}"
        assert queue_ids(env) == []
        wait_until(lambda: f"removed {qid} from the queue" in server.log(), 5, "the log line")
        assert "queue is empty" in env.cli("queue", "list").stdout
        # the server forgot it too: a flush finds nothing to retry
        assert "0 message(s)" in env.cli("queue", "flush").stdout
    finally:
        server.stop()


def test_offline_remove_and_flush(tmp_path, fakenet):
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml())
    qid = inject(env, "bob@example.com", ["x@pref.test"], message("offline"))
    assert queue_ids(env) == [qid]
    assert "server is not running" in env.cli("queue", "flush").stdout
    bad = env.cli("queue", "remove", "NOPE", check=False)
    assert bad.returncode == 1 and "no queued message with id NOPE" in bad.stderr
    env.cli("queue", "remove", qid)
    assert queue_ids(env) == []
    assert not (env.data_dir / "queue" / "msg" / qid).exists()
