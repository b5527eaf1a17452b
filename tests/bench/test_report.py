"""RESULTS.md and results.json: what a run writes, and that --report-from rebuilds the same
report from the JSON."""
from __future__ import annotations

import json

from bench import report
from bench.cli import main as bench_main
from bench.stats import CaseResult


def _results():
    return [
        CaseResult("smtp", "4 KB x 10, 1 session", "msg/s", True, "postfix",
                   mailhub=[100.0, 120.0, 110.0], peer_values=[50.0, 55.0, 60.0],
                   mailhub_peak_rss_kb=60 * 1024, peer_peak_rss_kb=300 * 1024,
                   peer_peak_pss_kb=40 * 1024),
        CaseResult("idle", "10 clients: server memory", "MB", False, "dovecot",
                   mailhub=[300.0, 310.0, 305.0], peer_values=[90.0, 90.0, 91.0],
                   target_abs=500.0),
        CaseResult("imap", "SELECT", "s", False, "dovecot", status="error: boom"),
    ]


def test_markdown_has_tables_ratios_targets_and_missing_parts(tmp_path):
    meta = {"date": "today", "command": "python -m bench --quick", "quick": True, "rounds": 3,
            "duration_s": 12.0, "machine": {"cores": 2, "memory_gib": 24, "commit": "abc",
                                            "commit_at_start": "abc", "tree": "clean"}}
    out = tmp_path / "RESULTS.md"
    report.write_markdown(out, _results(), meta, {"queue": "mailhub.queue is not in the tree yet"},
                          {}, {"smtp": "how smtp is measured"}, "hand notes", chart=False)
    text = out.read_text()
    assert "`python -m bench --quick`" in text and "2 cores" in text
    assert "| smtp | 4 KB x 10, 1 session | 2.00 | ratio >= 1 | yes |" in text
    # an absolute target decides, not the ratio (90 / 305 here)
    assert "| idle | 10 clients: server memory | 0.295 | mailhub < 500 MB | yes |" in text
    assert "error: boom" in text
    assert "**queue**: mailhub.queue is not in the tree yet" in text
    assert "| 4 KB x 10, 1 session | msg/s | 110 (100–120) | 55.0 (50.0–60.0) | 2.00 | 60 | 300 (40) |" in text
    assert "how smtp is measured" in text and text.rstrip().endswith("hand notes")


def test_report_from_json_rebuilds_the_same_tables(tmp_path):
    meta = {"date": "today", "command": "c", "quick": False, "rounds": 3, "duration_s": 1.0,
            "machine": {"cores": 2}, "skipped": {}, "profiles": {}, "methodology": {}}
    report.write_json(tmp_path / "results.json", _results(), meta)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"][0]["ratio"] == 2.0 and data["results"][1]["target_met"] is True
    assert bench_main(["--report-from", str(tmp_path / "results.json"), "--out",
                       str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "| smtp | 4 KB x 10, 1 session | 2.00 | ratio >= 1 | yes |" in text


def test_header_names_both_password_schemes(tmp_path):
    meta = {"date": "today", "command": "c", "quick": False, "rounds": 3, "duration_s": 1.0,
            "machine": {"cores": 2},
            "peer_auth": {"dovecot_scheme": "ARGON2ID", "idle_dovecot_scheme": "PLAIN",
                          "auth_cache": "10M, 5 min", "mailhub_scheme": "ARGON2ID"}}
    out = tmp_path / "RESULTS.md"
    report.write_markdown(out, _results(), meta, {}, {}, {}, "", chart=False)
    line = next(l for l in out.read_text().splitlines() if l.startswith("- **Passwords:**"))
    assert "`{ARGON2ID}` with the same Argon2id parameters" in line
    assert "`{PLAIN}` in the IDLE scenario" in line and "10M, 5 min" in line
