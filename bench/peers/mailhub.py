"""mailhub itself as a benchmark subject: ``twistd -n mailhub --config <tmp toml>``.

The working tree is what runs (PYTHONPATH = repository root, as tests/conftest.py does);
listeners bind tcp:0 on 127.0.0.1 and the real ports come from data_dir/run/listeners.json.
Users are created in one helper process through the directory and store APIs (the CLI would
spawn one interpreter per user). ``profile=`` wraps the server in py-spy for a profile.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailhub.runfile import listeners_path, read_listeners

from bench import procs

REPO = Path(__file__).resolve().parent.parent.parent
LISTENERS = ("mx", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]

_SETUP_USERS = r"""
import json, sys
from mailhub.config import load
from mailhub.directory import open_directory
from mailhub.store import MailStore
cfg = load(sys.argv[1])
users = json.loads(sys.stdin.read())
d = open_directory(cfg.data_dir)
store = MailStore(cfg.data_dir / "mail")
for addr, pw in users.items():
    dom = addr.rpartition("@")[2]
    if not d.has_domain(dom):
        d.add_domain(dom)
    if not d.user_exists(addr):
        d.add_user(addr, pw)
    if not store.has_user(addr):
        store.create_user(addr)
print("ok")
"""


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Mailhub:
    def __init__(self, root: Path, extra_toml: str = "", hostname: str = "mailhub.bench.example"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.config_path = self.root / "mailhub.toml"
        self.hostname = hostname
        self.extra_toml = extra_toml
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, list[int]] = {}
        self.log_path = self.root / "twistd.log"
        self.profile_out: Path | None = None
        procs.register_root(self.root)
        self.write_config()

    def write_config(self, extra_toml: str | None = None) -> None:
        if extra_toml is not None:
            self.extra_toml = extra_toml
        lines = ["[server]", f'hostname = "{self.hostname}"', f'data_dir = "{self.data_dir}"', "",
                 "[listen]"]
        for name in LISTENERS:
            lines.append(f'{name} = ["tcp:0:interface=127.0.0.1"]')
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_toml + "\n")

    def add_users(self, users: dict[str, str]) -> None:
        p = subprocess.run([sys.executable, "-c", _SETUP_USERS, str(self.config_path)],
                           input=json.dumps(users), capture_output=True, text=True,
                           env=subprocess_env(), timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"mailhub user setup failed:\n{p.stdout}\n{p.stderr}")

    def maildir(self, address: str, folder: str = "INBOX") -> Path:
        local, _, domain = address.lower().rpartition("@")
        base = self.data_dir / "mail" / domain / local
        return base if folder == "INBOX" else base / ("." + folder)

    def start(self, timeout: float = 60.0, profile: Path | None = None) -> "Mailhub":
        listeners_path(self.data_dir).unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")
        cmd = [*TWISTD, "--nodaemon", "--pidfile=", "mailhub", "--config", str(self.config_path)]
        self.profile_out = None
        if profile is not None:
            pyspy = Path(sys.executable).parent / "py-spy"
            cmd = [str(pyspy), "record", "--format", "raw", "--rate", "200", "-o", str(profile),
                   "--", *cmd]
            self.profile_out = profile

        def limits():
            from bench.peers.dovecot import raise_nofile
            raise_nofile(65536)

        self.proc = procs.popen(cmd, cwd=self.root, env=subprocess_env(), stdout=self._log,
                                stderr=subprocess.STDOUT, preexec_fn=limits)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailhub exited with {self.proc.returncode}:\n{self.log()}")
            ports = read_listeners(self.data_dir, self.server_pid())
            if ports is not None:
                self.ports = ports
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mailhub did not start in {timeout}s:\n{self.log()}")

    def server_pid(self) -> int | None:
        """The twistd process (a child of py-spy when profiling)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        if self.profile_out is None:
            return self.proc.pid
        kids = procs.children_map().get(self.proc.pid, [])
        return kids[0] if kids else None

    pid = server_pid

    def port(self, name: str) -> int:
        return self.ports[name][0]

    def has_listener(self, name: str) -> bool:
        return bool(self.ports.get(name))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        server = self.server_pid()
        if server and server != self.proc.pid:
            os.kill(server, signal.SIGTERM)  # py-spy writes its profile when the child exits
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            procs.stop_pid(self.proc.pid, group=True, timeout=5)
            self.proc.wait(5)
        finally:
            self._log.close()
