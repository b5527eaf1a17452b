"""SMTP ingestion: smtp-source -> mailhub's MX listener vs Postfix's smtpd, both delivering
into a Maildir with fsync before the message counts (mailhub answers 250 only after its group
commit; Postfix answers 250 after fsyncing its queue file and then delivers with virtual(8),
which fsyncs the Maildir file). Timed until every message is in the Maildir.
"""
from __future__ import annotations

import time

from bench import maildir_gen, procs
from bench.context import DOMAIN, PASSWORD, Bench, module_ready, user
from bench.peers.mailhub import Mailhub
from bench.peers.postfix import Postfix
from bench.peers.smtptools import parse_source_errors, smtp_source
from bench.stats import CaseResult

SENDER = "sender@senders.example"

METHODOLOGY = {"smtp": (
    "`smtp-source -s <sessions> -m <count> -l <size>` (one connection per message, as MX "
    "traffic comes) against mailhub's MX listener and Postfix's smtpd (virtual(8) Maildir "
    "delivery). Durability is the same: mailhub answers 250 after its group commit (file "
    "fsync, rename, directory fsync); Postfix answers 250 after fsyncing its queue file and "
    "virtual(8) fsyncs the Maildir file. Timed from the start of smtp-source until every "
    "message is in the Maildir (Postfix delivers after the 250); the Maildir is emptied "
    "between runs.")}


def cases(quick: bool):
    if quick:
        return [(4096, 200, 1), (4096, 300, 10), (4096, 300, 50), (102400, 100, 10)]
    return [(size, 2000, s) for size in (4096, 102400) for s in (1, 10, 50)]


def one_run(port: int, maildir, sessions: int, count: int, size: int, timeout: float) -> float:
    maildir_gen.clear(maildir)
    t0 = time.monotonic()
    elapsed, rc, out = smtp_source(port, sessions, count, size, SENDER, user(), timeout=timeout)
    errors = parse_source_errors(out)
    if rc != 0 or errors:
        raise RuntimeError(f"smtp-source exit {rc}: {' | '.join(errors) or out[-300:]}")
    deadline = t0 + timeout
    n = maildir_gen.count_messages(maildir)
    while n < count and time.monotonic() < deadline:
        time.sleep(0.005)
        n = maildir_gen.count_messages(maildir)
    total = time.monotonic() - t0
    if n < count:
        raise RuntimeError(f"only {n}/{count} delivered in {timeout}s")
    return count / total


def run(b: Bench) -> None:
    why = module_ready("mailhub.smtpserver.factory")
    if why:
        b.skipped["smtp"] = why
        return
    mh = Mailhub(b.dir("smtp-mailhub"), extra_toml="[smtp]\nmax_connections_per_ip = 1000\n")
    mh.add_users({user(): PASSWORD})
    mh_maildir = mh.maildir(user())
    pf_root = b.dir("smtp-postfix")
    pf = Postfix(pf_root, procs.free_port(), DOMAIN, ["user"], pf_root / "mail")
    pf.write_config()
    pf_maildir = pf_root / "mail" / DOMAIN / "user"
    try:
        mh.start()
        pf.start()
        mx = mh.port("mx")
        for size, count, sessions in cases(b.quick):
            label = f"{size // 1024} KB x {count}, {sessions} session{'s' if sessions > 1 else ''}"
            b.log(f"smtp: {label}")
            timeout = 60 + count * size / 1e6 * 2
            res = CaseResult("smtp", label, "msg/s", True, "postfix")
            from bench.procs import MemorySampler
            with MemorySampler(mh.pid) as mh_mem, MemorySampler(pf.pid, pss=True) as pf_mem:
                try:
                    vals = b.alternate([
                        ("mailhub", lambda: one_run(mx, mh_maildir, sessions, count, size, timeout)),
                        ("postfix", lambda: one_run(pf.port, pf_maildir, sessions, count, size, timeout)),
                    ])
                    res.mailhub, res.peer_values = vals["mailhub"], vals["postfix"]
                except Exception as e:
                    res.status = f"error: {e}"
                    b.log(f"  error: {e}\n{mh.log()[-1500:]}")
            res.mailhub_peak_rss_kb = mh_mem.peak_rss_kb
            res.peer_peak_rss_kb, res.peer_peak_pss_kb = pf_mem.peak_rss_kb, pf_mem.peak_pss_kb
            res.peer_procs = pf_mem.peak_procs
            b.add(res)
        if b.profile:
            profile_case(b, mh, mh_maildir, mx)
    finally:
        mh.stop()
        pf.stop()


def profile_case(b: Bench, mh: Mailhub, maildir, mx: int) -> None:
    """Extra mailhub-only runs under py-spy (4 KB x 10 sessions, 100 KB x 1) for the notes."""
    from bench.profiling import profile_run
    count = 300 if b.quick else 2000
    b.profiles["smtp 4 KB, 10 sessions"] = profile_run(
        b, mh, lambda: one_run(mh.port("mx"), maildir, 10, count, 4096, 300))
    b.profiles["smtp 100 KB, 1 session"] = profile_run(
        b, mh, lambda: one_run(mh.port("mx"), maildir, 1, count // 4, 102400, 300))
