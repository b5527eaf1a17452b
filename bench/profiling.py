"""Where mailhub's time goes: one run under ``py-spy record --format raw`` and a summary of
the collapsed stacks (self time per function, inclusive time per function and per module)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


_MAILHUB_DIRS = ("smtpserver/", "store/", "queue/", "imapserver/", "pop3server/", "auth/",
                 "directory/", "mda/", "dkim/", "dns/", "cli/")
IDLE_LEAVES = ("Condition.wait", "EPollReactor.doPoll", "Event.wait", "_wait_for_tstate_lock",
               "Thread.join", "select (", "poll (")


def parse_collapsed(text: str, callers: dict | None = None) -> tuple[Counter, Counter, Counter, int, int]:
    """From py-spy raw (collapsed) stacks: (self samples per function, inclusive samples per
    mailhub function, self samples per area, busy samples, idle samples). Samples whose leaf
    is a wait (epoll, a thread pool's condition) count as idle and are left out."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    areas: Counter = Counter()
    busy = idle = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        raw = [f for f in stack.split(";") if f]
        if not raw:
            continue
        frames = [_name(f) for f in raw]
        if frames[-1].startswith(IDLE_LEAVES):
            idle += n
            continue
        busy += n
        self_c[frames[-1]] += n
        areas[_area(raw[-1])] += n
        mine = [f for f, r in zip(frames, raw) if "mailhub/" in r]
        for f in set(mine):  # a recursive function counts once per sample
            incl[f] += n
        if callers is not None:
            via = next((f for f in reversed(mine) if f != frames[-1]), None)
            if via:
                callers.setdefault(frames[-1], Counter())[via] += n
    return self_c, incl, areas, busy, idle


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    short = "/".join(Path(file).parts[-2:])
    return f"{m.group('func')} ({short})"


def _area(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    file = m.group("file") if m else frame
    file = "/" + file.lstrip("/")
    if "/mailhub/" in file:
        parts = file.split("/mailhub/")[-1].split("/")
        return "mailhub/" + (parts[0] if len(parts) > 1 else parts[0])
    if "/twisted/" in file:
        parts = file.split("/twisted/")[-1].split("/")
        return "twisted/" + parts[0]
    if "<" in file:
        return "other"
    return "stdlib/other: " + Path(file).name


def summarize(path: Path, top: int = 12) -> dict:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return {"error": f"no profile: {e}"}
    callers: dict = {}
    self_c, incl, areas, busy, idle = parse_collapsed(text, callers)
    if not busy:
        return {"error": "empty profile"}

    def pct(c: Counter, k: int):
        return [(name, round(100.0 * n / busy, 1)) for name, n in c.most_common(k)]

    def via(name: str) -> str:
        c = callers.get(name)
        return f"{name} <- {c.most_common(1)[0][0]}" if c and "mailhub/" not in name.split("(")[-1] \
            and not name.split("(")[-1].startswith(tuple(_MAILHUB_DIRS)) else name

    self_top = [(via(name), p) for name, p in pct(self_c, top)]

    return {"samples": busy, "idle_samples": idle, "self": self_top,
            "inclusive": pct(incl, top), "areas": pct(areas, top)}


def profile_run(b, mh, fn, rate: int = 250) -> dict:
    """Attach py-spy to the running mailhub, run ``fn`` once, detach, summarize."""
    import signal
    import subprocess
    import sys
    import time

    from bench import procs

    out = b.root / f"profile-{len(b.profiles)}.txt"
    pid = mh.pid()
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pid or not pyspy.exists():
        return {"error": "py-spy or the server is missing"}
    spy = procs.popen([str(pyspy), "record", "--pid", str(pid), "--rate", str(rate),
                       "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        fn()
    except Exception as e:
        b.log(f"  profile run failed: {e}")
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            procs.stop_pid(spy.pid, group=True)
    return summarize(out)
