"""What every scenario gets: the options, a temp root, logging, result collection, and
helpers that decide whether a part of mailhub is ready to be measured."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.stats import CaseResult, alternate

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "bench.example"
PASSWORD = "bench-pw-1"


class Bench:
    def __init__(self, quick: bool, rounds: int, keep: bool = False, profile: bool = False,
                 log_file=None):
        self.quick = quick
        self.rounds = rounds
        self.keep = keep
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="mhbench-"))
        self.root.chmod(0o755)
        procs.register_root(self.root)
        self.results: list[CaseResult] = []
        self.skipped: dict[str, str] = {}
        self.profiles: dict[str, dict] = {}
        self.t0 = time.monotonic()
        self.log_file = log_file
        self.dovecot_scheme: str | None = None  # None: Dovecot peer picks (ARGON2ID if it has it)
        self.idle_dovecot_scheme: str | None = None  # the same, for the IDLE scenario

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        return d

    def alternate(self, runs, min_rounds: int = 0):
        """A B A B ... for ``--rounds`` rounds, or ``min_rounds`` when that is more (cases
        that take well under a second get more rounds: their medians are noisier)."""
        return alternate(max(self.rounds, min_rounds), runs, log=self.log)

    def add(self, result: CaseResult) -> CaseResult:
        self.results.append(result)
        r = result.ratio
        self.log(f"  => {result.scenario} / {result.case}: ratio {r:.2f}" if r else
                 f"  => {result.scenario} / {result.case}: {result.status}")
        return result

    def cleanup(self) -> None:
        procs.cleanup_all()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def module_ready(*modules: str) -> str | None:
    """None if every module can be imported from the working tree, else why not."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                return f"{m} is not in the tree yet"
        except ModuleNotFoundError:
            return f"{m} is not in the tree yet"
    return None


def user(i: int | None = None) -> str:
    return f"user@{DOMAIN}" if i is None else f"user{i:03d}@{DOMAIN}"
