"""Processes the harness starts: registry, memory sampling, and guaranteed cleanup.

Every server the harness starts is registered here with its pid; ``cleanup_all()`` (run at
exit and on SIGINT/SIGTERM) stops each registered process group by its id, then any process
still alive whose command line names one of our temporary directories (the daemons that
detach themselves, like Postfix's master). Nothing is found by a broad name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

_registered: list[tuple[int, bool]] = []  # (pid, is_group_leader)
_tmp_roots: list[str] = []
_restore: list = []  # callables undoing temporary system tweaks (kernel limits)


def on_cleanup(fn) -> None:
    _restore.append(fn)


def register(pid: int, group: bool = True) -> None:
    _registered.append((pid, group))


def register_root(path: str | Path) -> None:
    """A temp dir whose name appears in the command line or cwd of every process we own."""
    _tmp_roots.append(str(path))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """pid and all its descendants."""
    kids = kids if kids is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(sum of RSS kB, sum of PSS kB, process count) over pid's process tree."""
    pids = tree(pid)
    return sum(rss_kb(p) for p in pids), sum(pss_kb(p) for p in pids), len(pids)


class MemorySampler:
    """Samples a process tree's memory every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid_fn, interval: float = 0.25, pss: bool = False):
        self.pid_fn = pid_fn  # callable -> root pid (or None)
        self.interval = interval
        self.pss = pss
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pid = self.pid_fn()
        if not pid:
            return
        pids = tree(pid)
        rss = sum(rss_kb(p) for p in pids)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_procs = max(self.peak_procs, len(pids))
        if self.pss:
            self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def owned_pids() -> list[int]:
    """Live processes (not us) whose command line or cwd lies in one of our temp roots."""
    return owned_pids_under(*_tmp_roots)


def owned_pids_under(*roots: str | Path) -> list[int]:
    """Live processes (not us) whose command line or cwd lies under one of ``roots``."""
    me = os.getpid()
    out = []
    _tmp_roots_l = [str(r) for r in roots]
    if not _tmp_roots_l:
        return out
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        cmd, cwd = _cmdline(pid), _cwd(pid)
        if any(root in cmd or cwd == root or cwd.startswith(root + "/") for root in _tmp_roots_l):
            if alive(pid):
                out.append(pid)
    return out


def stop_pid(pid: int, group: bool = False, timeout: float = 10.0) -> None:
    """SIGTERM (the group if it leads one), wait, then SIGKILL."""
    if not alive(pid):
        return
    try:
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if alive(pid):
        try:
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cleanup_all() -> list[int]:
    """Stop everything we started; returns the pids that had to be stopped here."""
    stopped = []
    for pid, group in reversed(_registered):
        if alive(pid):
            stopped.append(pid)
            stop_pid(pid, group)
    _registered.clear()
    for _ in range(3):
        left = owned_pids()
        if not left:
            break
        for pid in left:
            stopped.append(pid)
            stop_pid(pid, False, timeout=3)
    while _restore:
        try:
            _restore.pop()()
        except OSError:
            pass
    return stopped


def popen(cmd, *, group: bool = True, **kw) -> subprocess.Popen:
    """Popen in a new session (own process group), registered for cleanup."""
    p = subprocess.Popen(cmd, start_new_session=group, **kw)
    register(p.pid, group)
    return p


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (bound then released; the kernel won't hand it out again
    at once)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
