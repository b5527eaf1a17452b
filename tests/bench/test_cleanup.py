"""The harness's peers start on 127.0.0.1 high ports from a temp dir, do real work that the
harness reads back correctly, and leave nothing running (not even daemons that detach)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench import maildir_gen, procs
from bench.clients.spawn import run_once

needs = lambda *tools: pytest.mark.skipif(  # noqa: E731
    os.geteuid() != 0
    or any(shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}") for t in tools),
    reason=f"needs root and {', '.join(tools)} (Debian postfix / dovecot; python -m bench "
           "installs them)")


@pytest.fixture
def root():
    # not pytest's tmp_path: its parent is 0700, and Postfix/Dovecot drop privileges
    path = Path(tempfile.mkdtemp(prefix="mhbench-test-"))
    path.chmod(0o755)
    procs.register_root(path)
    yield path
    procs.cleanup_all()
    assert procs.owned_pids_under(path) == []
    shutil.rmtree(path, ignore_errors=True)


def test_cleanup_stops_registered_and_detached_processes(root):
    p = procs.popen(["sleep", "60"], cwd=root)
    # a grandchild that detached from us: found by its cwd in our temp root
    subprocess.run(["bash", "-c", "setsid sleep 61 </dev/null >/dev/null 2>&1 &"], cwd=root)
    time.sleep(0.2)
    assert p.pid in procs.owned_pids_under(root)
    assert len(procs.owned_pids_under(root)) == 2
    stopped = procs.cleanup_all()
    assert p.pid in stopped
    assert procs.owned_pids_under(root) == []
    assert p.wait(5) is not None


def test_memory_sampler_sees_a_process_tree(root):
    p = procs.popen(["bash", "-c", "sleep 30 & sleep 30"], cwd=root)  # bash + 2 sleeps
    time.sleep(0.2)
    with procs.MemorySampler(lambda: p.pid, interval=0.05, pss=True) as m:
        time.sleep(0.2)
    assert m.peak_procs == 3 and m.peak_rss_kb > 0 and m.peak_pss_kb > 0


@needs("smtp-sink", "smtp-source")
def test_smtp_sink_counts_what_smtp_source_sends(root):
    from bench.peers.smtptools import SmtpSink, smtp_source
    sink = SmtpSink(root / "sink", procs.free_port())
    sink.start()
    elapsed, rc, out = smtp_source(sink.port, 3, 25, 2048, "a@x.example", "b@y.example", timeout=60)
    assert rc == 0, out
    assert sink.wait_for(25, timeout=10)[0]
    assert sink.received() == 25
    sink.stop()
    assert procs.owned_pids_under(root) == []


@needs("postfix", "smtp-source")
def test_private_postfix_delivers_to_maildir_and_stops(root):
    from bench.peers.postfix import Postfix
    from bench.peers.smtptools import smtp_source
    had_main_cf = Path("/etc/postfix/main.cf").exists()
    pf = Postfix(root / "pf", procs.free_port(), "bench.example", ["user"], root / "pf" / "mail")
    pf.write_config()
    pf.start()
    try:
        assert pf.master_pid() is not None
        _, rc, out = smtp_source(pf.port, 2, 10, 4096, "s@senders.example", "user@bench.example",
                                 timeout=60)
        assert rc == 0, out
        md = root / "pf" / "mail" / "bench.example" / "user"
        deadline = time.monotonic() + 30
        while maildir_gen.count_messages(md) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert maildir_gen.count_messages(md) == 10
        assert "status=sent (delivered to maildir)" in pf.log()
    finally:
        pf.stop()
    assert pf.master_pid() is None
    assert procs.owned_pids_under(root / "pf") == []
    assert Path("/etc/postfix/main.cf").exists() == had_main_cf  # the system's config untouched


@needs("dovecot")
def test_private_dovecot_serves_a_maildir_copy_to_the_pop3_worker(root):
    from bench.peers.dovecot import Dovecot
    mail = root / "dc" / "mail"
    maildir_gen.fill([mail / "bench.example" / "user"], 30, 4096, to="user@bench.example")
    dc = Dovecot(root / "dc", mail, {"user@bench.example": "pw-1"}, procs.free_port(),
                 procs.free_port())
    maildir_gen.chown_tree(mail, dc.uid, dc.gid)
    dc.write_config()
    dc.start()
    try:
        res = run_once([{"mode": "pop3", "host": "127.0.0.1", "port": dc.pop3_port,
                         "users": ["user@bench.example"], "password": "pw-1"}], timeout=60)[0]
    finally:
        dc.stop()
    s = res["sessions"][0]
    assert s["messages"] == 30 and s["bytes"] >= 30 * 4096
    assert procs.owned_pids_under(root / "dc") == []


@needs("dovecot")
def test_private_dovecot_checks_argon2id_hashes_with_its_auth_cache(root):
    import imaplib
    from bench.peers.dovecot import Dovecot
    mail = root / "dc" / "mail"
    maildir_gen.fill([mail / "bench.example" / "user"], 2, 1024, to="user@bench.example")
    dc = Dovecot(root / "dc", mail, {"user@bench.example": "pw-1"}, procs.free_port(),
                 procs.free_port(), scheme="ARGON2ID")
    maildir_gen.chown_tree(mail, dc.uid, dc.gid)
    dc.write_config()
    assert "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$" in (root / "dc" / "passwd").read_text()
    conf = dc.conf.read_text()
    assert "auth_cache_size = 10M" in conf and "auth_cache_ttl = 5 min" in conf
    dc.start()
    try:
        for _ in range(2):  # the second one goes through the auth cache
            c = imaplib.IMAP4("127.0.0.1", dc.imap_port, timeout=30)
            assert c.login("user@bench.example", "pw-1")[0] == "OK"
            assert c.select("INBOX")[1] == [b"2"]
            c.logout()
        c = imaplib.IMAP4("127.0.0.1", dc.imap_port, timeout=30)
        with pytest.raises(imaplib.IMAP4.error):
            c.login("user@bench.example", "wrong")
        c.shutdown()
    finally:
        dc.stop()
    assert procs.owned_pids_under(root / "dc") == []


def test_mailhub_instance_runs_the_working_tree_and_stops(root):
    from bench.peers.mailhub import Mailhub
    mh = Mailhub(root / "mh")
    mh.add_users({"user@bench.example": "pw-123456"})
    maildir_gen.fill([mh.maildir("user@bench.example")], 12, 4096, to="user@bench.example")
    mh.start()
    try:
        assert mh.has_listener("imap") and mh.has_listener("pop3")
        res = run_once([{"mode": "pop3", "host": "127.0.0.1", "port": mh.port("pop3"),
                         "users": ["user@bench.example"], "password": "pw-123456"}], timeout=60)[0]
    finally:
        mh.stop()
    assert res["sessions"][0]["messages"] == 12
    assert procs.owned_pids_under(root / "mh") == []
