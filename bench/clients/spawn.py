"""Start worker processes, wait until all are ready, release them together, collect results."""
from __future__ import annotations

import json
import select
import subprocess
import sys
import time

from bench import procs
from bench.peers.mailhub import subprocess_env


class Workers:
    def __init__(self, specs: list[dict], timeout: float = 600):
        self.timeout = timeout
        self.procs = [procs.popen([sys.executable, "-m", "bench.clients.worker", json.dumps(s)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=subprocess_env(), text=True, bufsize=1)
                      for s in specs]
        self.ready: list[dict] = []

    def _read_line(self, p: subprocess.Popen, deadline: float) -> dict:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("worker did not answer in time")
            r, _, _ = select.select([p.stdout], [], [], min(left, 1.0))
            if r:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker exited with {p.wait()}")
                try:
                    return json.loads(line)
                except ValueError:
                    continue

    def wait_ready(self) -> list[dict]:
        deadline = time.monotonic() + self.timeout
        self.ready = [self._read_line(p, deadline) for p in self.procs]
        return self.ready

    def go(self) -> None:
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def results(self) -> list[dict]:
        deadline = time.monotonic() + self.timeout
        out = []
        for p in self.procs:
            msg = self._read_line(p, deadline)
            out.append(msg.get("result", msg))
            p.wait(30)
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                procs.stop_pid(p.pid, group=True, timeout=5)
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_once(specs: list[dict], timeout: float = 600) -> list[dict]:
    with Workers(specs, timeout) as w:
        w.wait_ready()
        w.go()
        return w.results()
