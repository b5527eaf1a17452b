"""Where mailhub's time goes: one run under ``py-spy record --format raw`` and a summary of
the collapsed stacks (self time per function, inclusive time per function and per module)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> tuple[Counter, Counter, Counter, int]:
    """(self samples per function, inclusive samples per function, inclusive per area, total)."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    areas: Counter = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        for a in {_area(f) for f in stack.split(";") if f}:
            areas[a] += n
    return self_c, incl, areas, total


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
    self_c, incl, areas, total = parse_collapsed(text)
    if not total:
        return {"error": "empty profile"}

    def pct(c: Counter, k: int):
        return [(name, round(100.0 * n / total, 1)) for name, n in c.most_common(k)]

    return {"samples": total, "self": pct(self_c, top), "inclusive": pct(incl, top),
            "areas": pct(areas, top)}


def profile_run(b, mh, fn) -> dict:
    """Restart ``mh`` under py-spy, run ``fn`` once, stop, summarize, restart normally."""
    out = b.root / f"profile-{len(b.profiles)}.txt"
    mh.stop()
    try:
        mh.start(profile=out)
        fn()
    except Exception as e:
        b.log(f"  profile run failed: {e}")
    finally:
        mh.stop()
    summary = summarize(out)
    try:
        mh.start()
    except Exception as e:
        b.log(f"  restart after profiling failed: {e}")
    return summary
