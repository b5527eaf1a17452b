"""Shared test fixtures: a data dir + config on ephemeral ports, the CLI, and a real server.

The server runs as a real subprocess (``twistd -n mailhub --config ...``) with PYTHONPATH set
to the repository root, so Twisted's plugin path finds this checkout's
``twisted/plugins/mailhub_plugin.py`` and ``import mailhub`` is the working tree, not an
older installed copy. Listeners use ``tcp:0`` and the real ports are read from
``<data_dir>/run/listeners.json``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailhub.runfile import listeners_path, read_listeners

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "mail-corpus"
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
LISTENERS = ("mx", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")


def subprocess_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


class MailhubEnv:
    """A data dir and a config file for one test server; ``cli()`` runs the admin command."""

    def __init__(self, root: Path, extra_toml: str = "", hostname: str = "mail.test.example"):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.config_path = root / "mailhub.toml"
        self.hostname = hostname
        self.write_config(extra_toml)

    def write_config(self, extra_toml: str = "", listeners: dict | None = None) -> None:
        listen = {name: ["tcp:0:interface=127.0.0.1"] for name in LISTENERS}
        if listeners:
            listen.update(listeners)
        lines = [
            "[server]",
            f'hostname = "{self.hostname}"',
            f'data_dir = "{self.data_dir}"',
            "",
            "[listen]",
        ]
        for name, descs in listen.items():
            lines.append(f"{name} = {json.dumps(descs)}")
        self.config_path.write_text("\n".join(lines) + "\n" + extra_toml + "\n")

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "mailhub", *args, "--config", str(self.config_path)]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, env=subprocess_env(),
                           timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def add_user(self, address: str, password: str = "secret-pw") -> None:
        domain = address.rpartition("@")[2]
        if domain not in self.cli("domain", "list").stdout.split():
            self.cli("domain", "add", domain)
        self.cli("user", "add", address, "--password-stdin", input=password + "\n")

    def maildir(self, address: str, folder: str = "INBOX") -> Path:
        local, _, domain = address.lower().rpartition("@")
        base = self.data_dir / "mail" / domain / local
        return base if folder == "INBOX" else base / ("." + folder)

    def messages(self, address: str, folder: str = "INBOX") -> list[Path]:
        md = self.maildir(address, folder)
        return sorted([p for sub in ("new", "cur") for p in (md / sub).iterdir()])


class MailhubServer:
    """``twistd -n mailhub`` as a subprocess; ``port(name)`` gives a listener's real port."""

    def __init__(self, env: MailhubEnv):
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, list[int]] = {}
        self.log_path = env.root / "twistd.log"

    def start(self, timeout: float = 30.0) -> "MailhubServer":
        listeners_path(self.env.data_dir).unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", "mailhub", "--config", str(self.env.config_path)],
            cwd=self.env.root, env=subprocess_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mailhub exited with {self.proc.returncode}:\n{self.log()}")
            ports = read_listeners(self.env.data_dir, self.proc.pid)
            if ports is not None:
                self.ports = ports
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"mailhub did not start in {timeout}s:\n{self.log()}")

    def port(self, name: str) -> int:
        return self.ports[name][0]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self._log.close()


@pytest.fixture
def mh_env(tmp_path) -> MailhubEnv:
    return MailhubEnv(tmp_path)


@pytest.fixture
def mh_server(mh_env):
    """A started server on mh_env; add users with mh_env.add_user before or after start."""
    server = MailhubServer(mh_env)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server_factory(tmp_path):
    """Make several servers (restarts, kill tests): ``srv = server_factory(env)``."""
    started: list[MailhubServer] = []

    def make(env: MailhubEnv | None = None) -> MailhubServer:
        s = MailhubServer(env or MailhubEnv(tmp_path / f"srv{len(started)}"))
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
