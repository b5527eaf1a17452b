"""``python -m bench [--quick] [--only smtp,queue,pop3,imap,idle]``: install the peers if
missing, run the chosen scenarios (mailhub and its peer alternating), write bench/RESULTS.md,
bench/results.json and bench/ratios.png, and stop everything that was started."""
from __future__ import annotations

import argparse
import atexit
import importlib
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path

from bench import install, procs, report
from bench.context import Bench

SCENARIOS = ["smtp", "queue", "pop3", "imap", "idle"]
HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="reduced version of every scenario (< 3 min)")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (>= 3)")
    ap.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md/results.json go")
    ap.add_argument("--profile", action="store_true",
                    help="add one py-spy profiled mailhub run per scenario to the report")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--dovecot-scheme", default="auto",
                    help="password scheme of Dovecot's passdb: auto (ARGON2ID with mailhub's "
                         "Argon2id parameters when this Dovecot has it, else the strongest "
                         "available) for pop3/imap and PLAIN for idle (see docs/bench.md), "
                         "or one scheme for all, such as ARGON2ID, SHA512-CRYPT, PLAIN")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install peers")
    ap.add_argument("--report-from", type=Path, metavar="RESULTS_JSON",
                    help="only rewrite RESULTS.md/ratios.png from a results.json (e.g. after "
                         "editing bench/analysis.md); runs nothing")
    args = ap.parse_args(argv)
    if args.report_from:
        return rewrite_report(args.report_from, args.out)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    if args.rounds < 3:
        ap.error("--rounds must be at least 3")

    if not args.no_install:
        install.ensure_peers()
    missing = install.missing_tools()
    if missing:
        print(f"bench: missing tools {missing}; install postfix dovecot-imapd dovecot-pop3d", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "bench.log", "w")
    b = Bench(args.quick, args.rounds, keep=args.keep, profile=args.profile, log_file=log_file)
    from bench.peers.dovecot import password_schemes, pick_scheme
    if args.dovecot_scheme == "auto":
        b.dovecot_scheme = pick_scheme(password_schemes())
        # Dovecot re-verifies the hash on every login (its auth cache keeps the passdb lookup,
        # not the verification): 10,000 IDLE logins would time 10,000 Argon2 runs, not IDLE
        b.idle_dovecot_scheme = "PLAIN"
    else:
        b.dovecot_scheme = b.idle_dovecot_scheme = args.dovecot_scheme.upper()
    atexit.register(b.cleanup)

    def on_signal(signum, frame):
        b.cleanup()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in argv)
    b.log(f"{command}  (temp dir {b.root})")
    t0 = time.monotonic()
    load_before = _loadavg()
    machine_start = report.machine_info()
    methodology = {}
    try:
        for name in only:
            mod = importlib.import_module(f"bench.scenarios.{name}")
            b.log(f"== {name}")
            try:
                mod.run(b)
            except Exception as e:
                b.skipped[name] = f"failed: {e}"
                b.log(traceback.format_exc())
            for key, text in getattr(mod, "METHODOLOGY", {}).items():
                methodology[key] = text
            left = procs.owned_pids()
            if left:
                b.log(f"  warning: processes left after {name}: {left}; stopping them")
                procs.cleanup_all()
    finally:
        b.cleanup()
    machine = report.machine_info()
    machine["commit_at_start"] = machine_start.get("commit")
    machine["tree_at_start"] = machine_start.get("tree")
    machine["commits_during_run"] = report.commits_between(machine_start.get("commit"),
                                                           machine.get("commit"))
    meta = {"date": report.now_utc(), "command": command, "quick": args.quick,
            "rounds": args.rounds, "duration_s": time.monotonic() - t0,
            "machine": machine, "only": only, "skipped": b.skipped,
            "profiles": b.profiles, "methodology": methodology,
            "peer_auth": {"dovecot_scheme": b.dovecot_scheme, "auth_cache": "10M, 5 min",
                          "idle_dovecot_scheme": b.idle_dovecot_scheme,
                          "mailhub_scheme": "ARGON2ID"},
            "loadavg": {"before": load_before, "after": _loadavg()}}
    report.write_json(args.out / "results.json", b.results, meta)
    write_report(args.out, b.results, meta)
    b.log(f"wrote {args.out / 'RESULTS.md'} ({len(b.results)} cases, "
          f"{len(b.skipped)} scenarios not measured) in {meta['duration_s']:.0f} s")
    left = procs.owned_pids()
    if left:
        b.log(f"error: processes still running: {left}")
        return 1
    return 0


def write_report(out: Path, results, meta: dict) -> None:
    chart = report.write_chart(out / "ratios.png", results)
    analysis_path = HERE / "analysis.md"
    analysis = analysis_path.read_text() if analysis_path.exists() else ""
    report.write_markdown(out / "RESULTS.md", results, meta, meta.get("skipped", {}),
                          meta.get("profiles", {}), meta.get("methodology", {}), analysis, chart)


def rewrite_report(results_json: Path, out: Path) -> int:
    import json
    from bench.stats import CaseResult
    data = json.loads(results_json.read_text())
    fields = set(CaseResult.__dataclass_fields__)
    results = [CaseResult(**{k: v for k, v in r.items() if k in fields}) for r in data["results"]]
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, results, data["meta"])
    print(f"wrote {out / 'RESULTS.md'} from {results_json}")
    return 0


def _loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []
