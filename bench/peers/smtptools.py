"""Postfix's load tools: ``smtp-source`` (the SMTP load generator) and ``smtp-sink`` (a
loopback receiver that throws mail away), with parsers for their output.

``smtp-sink -c`` writes a running counter ``\\rsess=N quit=N mesg=N``; the sink's stdout goes
to a file that ``received()`` reads. smtp-source is bounded by its message count and by a
timeout after which it is killed.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from bench import procs

_SINK_COUNTER = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


def parse_sink_counter(data: bytes) -> dict[str, int]:
    """The last ``sess= quit= mesg=`` counter in smtp-sink -c output (zeros if none)."""
    last = None
    for last in _SINK_COUNTER.finditer(data):
        pass
    if last is None:
        return {"sess": 0, "quit": 0, "mesg": 0}
    return {"sess": int(last.group(1)), "quit": int(last.group(2)), "mesg": int(last.group(3))}


def parse_source_errors(text: str) -> list[str]:
    """smtp-source's diagnostics: lines such as ``smtp-source: fatal: ...`` or
    ``smtp-source: warning: ...`` (it says nothing on success)."""
    return [ln.strip() for ln in text.splitlines()
            if re.match(r"^smtp-source(\[\d+\])?: (fatal|warning|error|panic)", ln.strip())]


def smtp_source(port: int, sessions: int, count: int, size: int, sender: str, recipient: str,
                timeout: float = 300, helo: str = "source.bench.example",
                reuse_connection: bool = False) -> tuple[float, int, str]:
    """Run smtp-source against 127.0.0.1:port; returns (seconds, exit code, diagnostics)."""
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-f", sender, "-t", recipient, "-M", helo]
    if reuse_connection:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{port}")
    t0 = time.monotonic()
    p = procs.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop_pid(p.pid, group=True, timeout=2)
        out, _ = p.communicate()
        return time.monotonic() - t0, -1, f"timed out after {timeout}s\n" + out.decode(errors="replace")
    return time.monotonic() - t0, p.returncode, out.decode(errors="replace")


class SmtpSink:
    """``smtp-sink -c -u nobody 127.0.0.1:<port> <backlog>`` writing its counter to a file."""

    def __init__(self, root: Path, port: int, backlog: int = 256):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.backlog = backlog
        self.out_path = self.root / "smtp-sink.out"
        self.proc = None
        procs.register_root(self.root)

    def start(self, timeout: float = 10) -> None:
        self._out = open(self.out_path, "wb")
        self.proc = procs.popen(["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}",
                                 str(self.backlog)], stdout=self._out, stderr=subprocess.STDOUT,
                                cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("smtp-sink exited: " + self.out_path.read_text(errors="replace"))
            if procs.port_open(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def received(self) -> int:
        try:
            with open(self.out_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 200))
                return parse_sink_counter(f.read())["mesg"]
        except OSError:
            return 0

    def wait_for(self, n: int, timeout: float) -> tuple[bool, float]:
        """Poll until the sink counted ``n`` messages; (reached, monotonic time reached)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.received() >= n:
                return True, time.monotonic()
            time.sleep(0.01)
        return self.received() >= n, time.monotonic()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            procs.stop_pid(self.proc.pid, group=True, timeout=5)
            self.proc.wait(5)
            self._out.close()

    def pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None
