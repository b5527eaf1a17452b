"""RESULTS.md, results.json and ratios.png from a run's CaseResults."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench.stats import CaseResult

REPO_ROOT = Path(__file__).resolve().parent.parent

SCENARIO_TITLES = {
    "smtp": "SMTP ingestion (smtp-source -> MX, delivered to Maildir with fsync)",
    "queue": "Outbound relay from the queue to smtp-sink",
    "pop3": "POP3: UIDL + RETR all (poplib)",
    "imap": "IMAP: 50,000-message INBOX operations (one client)",
    "imapmix": "IMAP mixed load (SELECT, FETCH, STORE, APPEND, EXPUNGE, IDLE)",
    "idle": "IMAP: many clients in IDLE (memory and push latency)",
}


def machine_info() -> dict:
    info = {"cores": os.cpu_count(), "python": sys.version.split()[0],
            "kernel": platform.release()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for name, cmd in (("postfix", ["postconf", "-d", "-h", "mail_version"]),
                      ("dovecot", ["dovecot", "--version"])):
        try:
            info[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                        env={**os.environ, "MAIL_CONFIG": "/nonexistent"}
                                        ).stdout.strip().split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            info[name] = "?"
    try:
        from importlib.metadata import version
        info["twisted"] = version("twisted")
    except Exception:  # noqa: BLE001 - not installed in this interpreter
        info["twisted"] = "?"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, cwd=REPO_ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mailhub"],
                               capture_output=True, text=True, cwd=REPO_ROOT).stdout
        info["tree"] = "with uncommitted changes in mailhub/" if dirty.strip() else "clean"
    except OSError:
        pass
    return info


def commits_between(a: str | None, b: str | None) -> int:
    """How many commits touching mailhub/ landed between two revisions (0 if unknown)."""
    if not a or not b or a == b:
        return 0
    try:
        out = subprocess.run(["git", "rev-list", "--count", f"{a}..{b}", "--", "mailhub"],
                             capture_output=True, text=True, cwd=REPO_ROOT).stdout
        return int(out.strip() or 0)
    except (OSError, ValueError):
        return 0


def _software(m: dict) -> str:
    start, end = m.get("commit_at_start"), m.get("commit", "?")
    if start and start != end and m.get("commits_during_run"):
        n = m.get("commits_during_run", 0)
        return (f"mailhub {start} ({m.get('tree_at_start', '?')}) at the start, {end} at the end "
                f"({n} commit{'s' if n != 1 else ''} to mailhub/ landed during the run: each "
                f"server start runs the tree as it is then)")
    if start and start != end:
        return (f"mailhub {start} ({m.get('tree_at_start', '?')}; later commits during the run "
                f"did not touch mailhub/)")
    return f"mailhub {end} ({m.get('tree', '?')})"


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _cell(s: dict | None) -> str:
    if not s:
        return "–"
    return f"{_fmt(s['median'])} ({_fmt(s['min'])}–{_fmt(s['max'])})"


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}" if kb else "–"


def write_json(path: Path, results: list[CaseResult], meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "results": [r.to_json() for r in results]},
                               indent=1) + "\n")


def write_chart(path: Path, results: list[CaseResult]) -> bool:
    rows = [(f"{r.scenario}: {r.case}", r.ratio, r.target_met) for r in results if r.ratio]
    if not rows:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [r[0] for r in rows][::-1]
    vals = [r[1] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    met = [r[2] for r in rows][::-1]
    colors = ["#2a9d4b" if m else "#d1495b" for m in met]
    ax.barh(labels, vals, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("mailhub / peer (>1: mailhub faster; log scale); green: target met")
    ax.set_title("mailhub vs Postfix/Dovecot, median of alternating rounds")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _auth_line(a: dict) -> str:
    scheme = a.get("dovecot_scheme") or "?"
    idle = a.get("idle_dovecot_scheme") or scheme
    same = scheme == a.get("mailhub_scheme", "ARGON2ID")
    return (f"- **Passwords:** mailhub Argon2id (m=19456 KiB, t=2, p=1), verified logins cached "
            f"5 min; Dovecot passwd-file `{{{scheme}}}`"
            + (" with the same Argon2id parameters" if same else
               " (not the same scheme as mailhub: login costs differ)")
            + (f" (`{{{idle}}}` in the IDLE scenario)" if idle != scheme else "")
            + f", auth cache {a.get('auth_cache', '?')}, which keeps the passdb lookup but "
            "verifies the hash again on every login (see docs/bench.md)")


def write_markdown(path: Path, results: list[CaseResult], meta: dict, skipped: dict,
                   profiles: dict, methodology: dict, analysis: str, chart: bool) -> None:
    m = meta["machine"]
    out = ["# mailhub benchmark results", "",
           f"- **Date:** {meta['date']} ({'quick' if meta['quick'] else 'full'} run, "
           f"{meta['rounds']} alternating rounds per case, {meta['duration_s']:.0f} s in all)",
           f"- **Command:** `{meta['command']}`",
           f"- **Machine:** {m.get('cores')} cores ({m.get('cpu', '?')}), "
           f"{m.get('memory_gib', '?')} GiB memory, Linux {m.get('kernel')}",
           f"- **Software:** {_software(m)}, Python "
           f"{m.get('python')}, Twisted {m.get('twisted', '?')}; Postfix {m.get('postfix')}, "
           f"Dovecot {m.get('dovecot')} (Debian packages)",
           *([f"- **Load average** (1/5/15 min) before the run: "
              f"{' / '.join(str(x) for x in meta['loadavg'].get('before', []))}, after: "
              f"{' / '.join(str(x) for x in meta['loadavg'].get('after', []))} (anything above "
              f"~1 means other work shared the 2 cores)"] if meta.get("loadavg") else []),
           *([_auth_line(meta["peer_auth"])] if meta.get("peer_auth") else []),
           "",
           "Each cell: median (min–max) over the rounds; mailhub and the peer alternate "
           "(A B A B ...). **Ratio** = how many times faster mailhub is (throughput: "
           "mailhub/peer; time or latency: peer/mailhub); > 1 means mailhub is ahead. "
           "Peak RSS is sampled every 250 ms over the case: mailhub is one process; for the "
           "peer it is the sum over its process tree (PSS in brackets, which counts shared "
           "pages once).", ""]
    if chart:
        out += ["![ratios](ratios.png)", ""]
    if skipped:
        out += ["## Not measured", ""]
        for k, v in skipped.items():
            out.append(f"- **{k}**: {v}")
        out.append("")
    out += ["## Summary", "",
            "Target: ratio >= 1 (as fast as the peer), except where an absolute target is named.",
            "", "| scenario | case | ratio | target | met |", "|---|---|---|---|---|"]
    for r in results:
        ratio = r.ratio
        met = r.target_met
        target = (f"mailhub {'<' if not r.higher_is_better else '>'} {r.target_abs:g} {r.metric}"
                  if r.target_abs is not None else "ratio >= 1")
        out.append(f"| {r.scenario} | {r.case} | {_fmt(ratio) if ratio else r.status} | {target} | "
                   f"{'yes' if met else ('no' if met is not None else '–')} |")
    out.append("")
    seen = []
    for r in results:
        if r.scenario not in seen:
            seen.append(r.scenario)
    for sc in seen:
        rows = [r for r in results if r.scenario == sc]
        peer = rows[0].peer
        out += [f"## {SCENARIO_TITLES.get(sc, sc)}", ""]
        if methodology.get(sc):
            out += [methodology[sc], ""]
        out += [f"| case | unit | mailhub | {peer} | ratio | mailhub peak RSS MB | {peer} peak RSS MB (PSS) |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            peer_mem = f"{_mb(r.peer_peak_rss_kb)} ({_mb(r.peer_peak_pss_kb)})" if r.peer_peak_rss_kb else "–"
            status = "" if r.status == "ok" else f" **{r.status}**"
            out.append(f"| {r.case}{status} | {r.metric} | {_cell(r.summary(r.mailhub))} | "
                       f"{_cell(r.summary(r.peer_values))} | {_fmt(r.ratio)} | "
                       f"{_mb(r.mailhub_peak_rss_kb)} | {peer_mem} |")
        notes = [r for r in rows if r.notes or r.extra]
        if notes:
            out.append("")
            for r in notes:
                bits = [r.notes] if r.notes else []
                if r.extra:
                    bits.append(", ".join(f"{k}: {v}" for k, v in r.extra.items()))
                out.append(f"- {r.case}: " + "; ".join(bits))
        out.append("")
    if profiles:
        out += ["## Profiles of mailhub (py-spy, one extra run each)", ""]
        for name, p in profiles.items():
            out.append(f"### {name}")
            if "error" in p:
                out += ["", p["error"], ""]
                continue
            out += ["", f"{p['samples']} busy samples ({p.get('idle_samples', 0)} idle ones, "
                    "waiting in epoll or a thread pool, left out). Self time by area:", ""]
            out += [f"- {a}: {pct}%" for a, pct in p["areas"][:8]]
            out += ["", "Top functions by self time:", ""]
            out += [f"- {f}: {pct}%" for f, pct in p["self"][:10]]
            out += ["", "mailhub functions by inclusive time:", ""]
            out += [f"- {f}: {pct}%" for f, pct in p["inclusive"][:10]]
            out.append("")
    if analysis:
        out += ["## Notes and analysis", "", analysis.strip(), ""]
    path.write_text("\n".join(out) + "\n")


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
