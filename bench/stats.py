"""Results: one CaseResult per measured case, with median/min/max and the mailhub/peer ratio.

The ratio is always "how many times faster mailhub is": for throughputs (higher is better)
mailhub/peer, for times and latencies (lower is better) peer/mailhub. >1 means mailhub wins.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class CaseResult:
    scenario: str
    case: str
    metric: str                      # unit shown in the table: "msg/s", "s", "ops/s", "ms", "MB"
    higher_is_better: bool
    peer: str                        # "postfix" | "dovecot"
    mailhub: list[float] = field(default_factory=list)
    peer_values: list[float] = field(default_factory=list)
    mailhub_peak_rss_kb: int = 0
    peer_peak_rss_kb: int = 0
    peer_peak_pss_kb: int = 0
    peer_procs: int = 0
    status: str = "ok"               # "ok", "not ready: ...", "error: ..."
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # an absolute target for mailhub's median instead of "ratio >= 1" (the IDLE scenario's
    # "under 500 MB", "under 100 ms"): below it when lower is better, above it otherwise
    target_abs: float | None = None

    @property
    def target_met(self) -> bool | None:
        if self.target_abs is not None:
            s = self.summary(self.mailhub)
            if not s:
                return None
            return s["median"] < self.target_abs if not self.higher_is_better \
                else s["median"] > self.target_abs
        r = self.ratio
        return None if r is None else r >= 1.0

    @staticmethod
    def summary(values: list[float]) -> dict | None:
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "n": len(values)}

    @property
    def ratio(self) -> float | None:
        a, b = self.summary(self.mailhub), self.summary(self.peer_values)
        if not a or not b or not a["median"] or not b["median"]:
            return None
        if self.higher_is_better:
            return a["median"] / b["median"]
        return b["median"] / a["median"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["mailhub_summary"] = self.summary(self.mailhub)
        d["peer_summary"] = self.summary(self.peer_values)
        d["ratio"] = self.ratio
        d["target_met"] = self.target_met
        return d


def alternate(rounds: int, runs: list[tuple[str, callable]], log=print) -> dict[str, list[float]]:
    """Run each (name, fn) in turn, A B A B ..., ``rounds`` times; fn() -> one float."""
    out: dict[str, list[float]] = {name: [] for name, _ in runs}
    for r in range(rounds):
        for name, fn in runs:
            v = fn()
            out[name].append(v)
            log(f"    round {r + 1}/{rounds} {name}: {v:.4g}")
    return out
