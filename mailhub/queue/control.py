"""How ``mailhub queue flush|remove|inject`` reach the running server without a restart.

The CLI drops a request file ``<data_dir>/queue/control/<uuid>.req`` (JSON, written
atomically); the server polls that directory a few times a second, acts on the request
(flush, remove ID, load ID) and answers with ``<uuid>.resp``. When no server is running
(``<data_dir>/run/queue.pid`` missing or its process gone) the CLI works on the spool
directly. A directory instead of a UNIX socket: no path-length limit, no listener to
secure beyond the data dir's own permissions, and a request survives a server restart.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from twisted.internet import task
from twisted.logger import Logger

log = Logger(namespace="mailhub.queue")

POLL_INTERVAL = 0.2


def pid_path(data_dir: Path) -> Path:
    return Path(data_dir) / "run" / "queue.pid"


def server_pid(data_dir: Path) -> int | None:
    """The pid of the running server's queue, or None."""
    try:
        pid = int(pid_path(data_dir).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _write_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class NoAnswer(Exception):
    """The server did not answer a control request in time."""


def request(control_dir: Path, op: str, timeout: float = 15.0, **params) -> dict:
    """Send one request to the running server and wait for its answer."""
    name = uuid.uuid4().hex
    req = Path(control_dir) / f"{name}.req"
    resp = Path(control_dir) / f"{name}.resp"
    _write_atomic(req, {"op": op, **params})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if resp.exists():
            try:
                answer = json.loads(resp.read_text())
            except ValueError:
                time.sleep(0.02)
                continue
            resp.unlink(missing_ok=True)
            return answer
        time.sleep(0.02)
    req.unlink(missing_ok=True)
    raise NoAnswer(f"the server did not answer within {timeout:g}s")


class ControlPoller:
    """Server side: answer requests found in the control directory."""

    def __init__(self, queue, control_dir: Path, reactor):
        self.queue = queue
        self.control_dir = Path(control_dir)
        self.loop = task.LoopingCall(self.poll)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(POLL_INTERVAL, now=True).addErrback(
            lambda f: log.failure("queue control poller stopped", f))

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def poll(self) -> None:
        try:
            names = sorted(p for p in os.listdir(self.control_dir) if p.endswith(".req"))
        except OSError:
            return
        for n in names:
            path = self.control_dir / n
            try:
                req = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            answer = self.handle(req)
            _write_atomic(path.with_suffix(".resp"), answer)
            path.unlink(missing_ok=True)

    def handle(self, req: dict) -> dict:
        op = req.get("op")
        try:
            if op == "flush":
                return {"ok": True, "count": self.queue.flush()}
            if op == "remove":
                qid = str(req.get("id", ""))
                try:
                    self.queue.remove(qid)
                except KeyError:
                    return {"ok": False, "error": f"no queued message with id {qid}"}
                return {"ok": True}
            if op == "load":
                self.queue.load(str(req.get("id", "")))
                return {"ok": True}
        except Exception as e:  # noqa: BLE001
            log.failure("queue control request {req} failed", req=req)
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown request {op!r}"}
