"""Production launch as root: bind a port below 1024, then drop to an unprivileged user with
twistd's --uid/--gid; the data dir (owned by that user) stays usable by the daemon."""
import grp
import json
import os
import poplib
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import TWISTD, MailhubEnv, subprocess_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind a port below 1024")


def free_low_port() -> int:
    for _ in range(50):
        port = random.randint(700, 1000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


@pytest.fixture
def open_tmp():
    """A directory the unprivileged user can traverse (pytest's tmp_path is under a 0700
    directory of root's)."""
    d = tempfile.mkdtemp(prefix="mailhub-priv-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_bind_low_port_then_drop_privileges(open_tmp):
    pytest.importorskip("mailhub.pop3server")
    tmp_path = open_tmp
    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid).gr_name
    env = MailhubEnv(tmp_path)
    port = free_low_port()
    env.write_config(listeners={"mx": [], "submission": [], "submissions": [], "pop3s": [],
                                "imap": [], "imaps": [],
                                "pop3": [f"tcp:{port}:interface=127.0.0.1"]})
    env.data_dir.mkdir()
    os.chown(env.data_dir, user.pw_uid, user.pw_gid)
    env.add_user("bob@example.com", "pw")  # CLI as root: files go to the data dir's owner
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([*TWISTD, "--nodaemon", "--pidfile=", f"--uid={user.pw_name}",
                          f"--gid={group}", "mailhub", "--config", str(env.config_path)],
                         cwd=tmp_path, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        run_file = env.data_dir / "run" / "listeners.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None and not run_file.exists():
            time.sleep(0.05)
        assert run_file.exists(), (tmp_path / "log").read_text()
        assert json.loads(run_file.read_text())["listeners"]["pop3"] == [port]
        status = open(f"/proc/{p.pid}/status").read()
        uid_line = next(l for l in status.splitlines() if l.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(user.pw_uid)] * 4  # real, effective, saved, fs
        c = poplib.POP3("127.0.0.1", port, timeout=10)
        c.user("bob@example.com")
        assert c.pass_("pw").startswith(b"+OK")
        c.quit()
        owned_by_root = [str(x) for x in env.data_dir.rglob("*") if x.lstat().st_uid == 0]
        assert owned_by_root == []
    finally:
        p.terminate()
        p.wait(20)
        log.close()
