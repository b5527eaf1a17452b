"""Outbound relay: 2,000 x 4 KB messages sitting in the queue, delivered to one loopback
smtp-sink. mailhub: the spool is filled offline with messages due in a day, mailhub started
with ``[outbound.routes]`` pointing the domain at the sink, then a queue flush (the control
request ``mailhub queue flush`` sends) starts the clock. Postfix: the same messages accepted
by its smtpd into the hold queue, then ``postsuper -H ALL`` + ``postqueue -f`` start the
clock; its transport map sends the domain to the same sink. Timed until the sink has counted
every message."""
from __future__ import annotations

import subprocess
import sys
import time

from bench import procs
from bench.context import DOMAIN, Bench, module_ready
from bench.peers.mailhub import Mailhub, subprocess_env
from bench.peers.postfix import Postfix
from bench.peers.smtptools import SmtpSink, parse_source_errors, smtp_source
from bench.procs import MemorySampler
from bench.stats import CaseResult

RELAY_DOMAIN = "relay.bench.example"
SENDER = f"sender@{DOMAIN}"

METHODOLOGY = {"queue": " ".join(__doc__.split()) + (
    " Each system keeps its shipped concurrency defaults (mailhub: `queue.max_connections_per_"
    "domain` = 10; Postfix: `default_destination_concurrency_limit` = 20 with slow start). "
    "Throughput = messages / seconds from the flush until the sink's counter reaches them all.")}

_FILL_SPOOL = r"""
import json, sys, time
from mailhub.queue.spool import Spool
from mailhub.queue.envelope import Envelope, Recipient, new_queue_id
from bench.maildir_gen import make_message
root, count, size, sender, rcpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
spool = Spool(root).create()
later = time.time() + 86400
for i in range(count):
    data = make_message(i, size, to=rcpt)
    qid = new_queue_id()
    spool.write_message(qid, data, sync=False)
    spool.write_envelope(Envelope(id=qid, sender=sender, recipients=[Recipient(rcpt)],
                                  next_attempt=later, size=len(data)), sync=False)
print(count)
"""


def fill_spool(mh: Mailhub, count: int, size: int) -> None:
    p = subprocess.run([sys.executable, "-c", _FILL_SPOOL, str(mh.data_dir / "queue"), str(count),
                        str(size), SENDER, f"rcpt@{RELAY_DOMAIN}"], capture_output=True,
                       text=True, env=subprocess_env(), timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"filling mailhub's spool failed: {p.stderr[-2000:]}")


def run(b: Bench) -> None:
    why = module_ready("mailhub.queue.service", "mailhub.queue.control")
    if why:
        b.skipped["queue"] = why
        return
    from mailhub.queue import control  # the request format the CLI uses
    count = 300 if b.quick else 2000
    size = 4096
    sink = SmtpSink(b.dir("queue-sink"), procs.free_port())
    mh = Mailhub(b.dir("queue-mailhub"), extra_toml=(
        f'[outbound.routes]\n"{RELAY_DOMAIN}" = "127.0.0.1:{sink.port}"\n'))
    pf_root = b.dir("queue-postfix")
    pf = Postfix(pf_root, procs.free_port(), DOMAIN, ["user"], pf_root / "mail",
                 relay={RELAY_DOMAIN: sink.port}, hold_smtpd=True)
    pf.write_config()
    res = CaseResult("queue", f"{count} x 4 KB relayed to smtp-sink", "msg/s", True, "postfix")
    mh_mem = MemorySampler(mh.pid)
    pf_mem = MemorySampler(pf.pid, pss=True)

    def mailhub_round() -> float:
        mh.stop()
        fill_spool(mh, count, size)
        mh.start()
        base = sink.received()
        with MemorySampler(mh.pid) as m:
            t0 = time.monotonic()
            answer = control.request(mh.data_dir / "queue" / "control", "flush", timeout=30)
            if not answer.get("ok") or answer.get("count", 0) < count:
                raise RuntimeError(f"mailhub flush answered {answer}")
            ok, t1 = sink.wait_for(base + count, timeout=120 + count / 5)
        mh_mem.peak_rss_kb = max(mh_mem.peak_rss_kb, m.peak_rss_kb)
        if not ok:
            raise RuntimeError(f"sink got {sink.received() - base}/{count} from mailhub\n{mh.log()[-1500:]}")
        return count / (t1 - t0)

    def postfix_round() -> float:
        elapsed, rc, out = smtp_source(pf.port, 10, count, size, SENDER, f"rcpt@{RELAY_DOMAIN}",
                                       timeout=300)
        if rc != 0 or parse_source_errors(out):
            raise RuntimeError(f"loading postfix: {out[-500:]}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and pf.queue_count("hold") < count:
            time.sleep(0.05)
        if pf.queue_count("hold") < count:
            raise RuntimeError(f"postfix held only {pf.queue_count('hold')}/{count}")
        base = sink.received()
        with MemorySampler(pf.pid, pss=True) as m:
            t0 = time.monotonic()
            pf.release_held()
            pf.flush()
            ok, t1 = sink.wait_for(base + count, timeout=120 + count / 5)
        pf_mem.peak_rss_kb = max(pf_mem.peak_rss_kb, m.peak_rss_kb)
        pf_mem.peak_pss_kb = max(pf_mem.peak_pss_kb, m.peak_pss_kb)
        pf_mem.peak_procs = max(pf_mem.peak_procs, m.peak_procs)
        if not ok:
            raise RuntimeError(f"sink got {sink.received() - base}/{count} from postfix\n{pf.log()[-1500:]}")
        return count / (t1 - t0)

    try:
        sink.start()
        mh.start()
        pf.start()
        b.log(f"queue: {res.case}")
        try:
            v = b.alternate([("mailhub", mailhub_round), ("postfix", postfix_round)])
            res.mailhub, res.peer_values = v["mailhub"], v["postfix"]
        except Exception as e:
            res.status = f"error: {e}"
            b.log(f"  error: {e}")
        res.mailhub_peak_rss_kb = mh_mem.peak_rss_kb
        res.peer_peak_rss_kb, res.peer_peak_pss_kb = pf_mem.peak_rss_kb, pf_mem.peak_pss_kb
        res.peer_procs = pf_mem.peak_procs
        b.add(res)
        if b.profile:
            from bench.profiling import profile_run
            mh.stop()
            fill_spool(mh, count, size)
            mh.start()
            b.profiles["queue relay"] = profile_run(b, mh, lambda: _flush_and_wait(
                control, mh, sink, count))
    finally:
        mh.stop()
        pf.stop()
        sink.stop()


def _flush_and_wait(control, mh, sink, count):
    base = sink.received()
    control.request(mh.data_dir / "queue" / "control", "flush", timeout=30)
    sink.wait_for(base + count, timeout=300)
