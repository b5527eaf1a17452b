"""Fixtures for the outbound tests: the fake Internet (tests/queue/fakenet.py) and a mailhub
configured to use it (its DNS server, its SMTP port, a fast retry schedule)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, MailhubEnv, MailhubServer, subprocess_env


class FakeNet:
    def __init__(self, root: Path, zone: dict, receivers: list[dict]):
        self.root = root
        self.out = root / "fakenet"
        self.spec = {"out": str(self.out), "zone": zone, "receivers": receivers}
        self.proc = None
        self.dns_port = self.smtp_port = None
        self.cert = None

    def start(self) -> "FakeNet":
        self.root.mkdir(parents=True, exist_ok=True)
        spec = self.root / "fakenet.json"
        spec.write_text(json.dumps(self.spec))
        self._log = open(self.root / "fakenet.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.queue.fakenet", str(spec)],
                                     cwd=REPO, env=subprocess_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        ready = self.out / "ready.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("fakenet exited: " + (self.root / "fakenet.log").read_text())
            if ready.exists():
                info = json.loads(ready.read_text())
                self.dns_port, self.smtp_port, self.cert = (
                    info["dns_port"], info["smtp_port"], info["cert"])
                return self
            time.sleep(0.05)
        raise AssertionError("fakenet did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
            self._log.close()

    def received(self, name: str) -> list[dict]:
        d = self.out / name
        return [json.loads(p.read_text(errors="surrogateescape")) for p in sorted(d.glob("*.json"))]

    def wait_received(self, name: str, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(name)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{name} received {len(self.received(name))} message(s), "
                             f"expected {n}")

    def toml(self, schedule: str = '["1s"]', outbound: str = "", routes: str = "",
             queue: str = "") -> str:
        out = [
            "[queue]", f"retry_schedule = {schedule}", queue,
            "[outbound]", f"port = {self.smtp_port}", "connect_timeout = 5", "timeout = 10",
            outbound,
            "[dns]", f'nameservers = ["127.0.0.1:{self.dns_port}"]',
        ]
        if routes:
            out += ["[outbound.routes]", routes]
        return "\n".join(out) + "\n"


MSG = (b"From: Alice <alice@example.com>\r\nTo: someone\r\nSubject: {subject}\r\n"
       b"Message-ID: <{subject}@example.com>\r\n\r\nHello {subject}.\r\n.leading dot\r\n")


def message(subject: str = "test") -> bytes:
    return MSG.replace(b"{subject}", subject.encode())


def inject(env: MailhubEnv, sender: str, rcpts: list[str], data: bytes,
           dkim_domain: str | None = None) -> str:
    args = ["queue", "inject", "--from", sender, *rcpts]
    if dkim_domain:
        args += ["--dkim-domain", dkim_domain]
    p = subprocess.run([sys.executable, "-m", "mailhub", *args, "--config", str(env.config_path)],
                       input=data, capture_output=True, env=subprocess_env(), timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode().split()[-1]


def queue_ids(env: MailhubEnv) -> list[str]:
    d = env.data_dir / "queue" / "env"
    return sorted(p.name[:-5] for p in d.glob("*.json")) if d.is_dir() else []


def envelope(env: MailhubEnv, qid: str) -> dict:
    return json.loads((env.data_dir / "queue" / "env" / f"{qid}.json").read_text())


def wait_until(pred, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_queue_empty(env: MailhubEnv, timeout: float = 20) -> None:
    wait_until(lambda: not queue_ids(env), timeout, "an empty queue")


# The default world: MX preference, a dead primary, an implicit MX, a null MX.
ZONE = {
    "pref.test": {"MX": [[20, "mx-b.net.test"], [10, "mx-a.net.test"]]},
    "down.test": {"MX": [[10, "mx-dead.net.test"], [20, "mx-b.net.test"]]},
    "nomx.test": {"A": ["127.0.0.3"]},
    "nullmx.test": {"MX": [[0, ""]]},
    "utf8.test": {"MX": [[10, "mx-c.net.test"]]},
    "tlsonly.test": {"MX": [[10, "mx-a.net.test"]]},
    "tls.test": {"MX": [[10, "mx.fake.test"]]},
    "mx.fake.test": {"A": ["127.0.0.4"]},
    "mx-a.net.test": {"A": ["127.0.0.4"]},
    "mx-b.net.test": {"A": ["127.0.0.3"]},
    "mx-c.net.test": {"A": ["127.0.0.7"]},
    "mx-dead.net.test": {"A": ["127.0.0.5"]},
    "drop.test": {"MX": [[10, "mx-d.net.test"], [20, "mx-b.net.test"]]},
    "busy.test": {"MX": [[10, "mx-e.net.test"], [20, "mx-b.net.test"]]},
    "mx-d.net.test": {"A": ["127.0.0.8"]},
    "mx-e.net.test": {"A": ["127.0.0.9"]},
    "garbage.test": {"MX": [[10, "mx-f.net.test"], [20, "mx-b.net.test"]]},
    "mx-f.net.test": {"A": ["127.0.0.10"]},
}
RECEIVERS = [
    {"name": "mx-a", "ip": "127.0.0.4", "starttls": True},
    {"name": "mx-b", "ip": "127.0.0.3"},
    {"name": "mx-c", "ip": "127.0.0.7", "smtputf8": True, "size": 20000},
    {"name": "mx-d", "ip": "127.0.0.8", "drop_after": 2},
    {"name": "mx-e", "ip": "127.0.0.9", "greeting": "421 4.3.2 too busy, try later"},
    {"name": "mx-f", "ip": "127.0.0.10", "garbage": True},
]


@pytest.fixture
def fakenet(tmp_path):
    net = FakeNet(tmp_path / "net", ZONE, RECEIVERS).start()
    yield net
    net.stop()


@pytest.fixture
def outbound(tmp_path, fakenet):
    """(env, server, net): a running mailhub routed through the fake net, user alice."""
    (tmp_path / "mh").mkdir()
    env = MailhubEnv(tmp_path / "mh", fakenet.toml())
    env.add_user("alice@example.com", "pw")
    server = MailhubServer(env).start()
    yield env, server, fakenet
    server.stop()
