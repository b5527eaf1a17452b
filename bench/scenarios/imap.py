"""IMAP: operations on a big INBOX with one client, and a mixed load of many clients.

Big INBOX (50,000 x ~4 KB, written as Maildir files, Dovecot serving a copy): per round and
per system, restart the server, then time LOGIN+SELECT (cold: first after the restart),
LOGIN+SELECT again (warm), ``UID FETCH 1:* (FLAGS)``, ``FETCH n-499:n (ENVELOPE)`` and
``UID SEARCH FROM``; then cold-only rounds (restart, LOGIN+SELECT) up to 15 cold samples per
system. The very first SELECT of each server (index build) is reported apart.
Mixed load: N asyncio clients in two worker processes, one mailbox each, looping SELECT, FETCH
(FLAGS ENVELOPE RFC822.SIZE) of 10 messages, FETCH BODY.PEEK[] of one, STORE +FLAGS, APPEND,
STORE \\Deleted + EXPUNGE of the appended one, IDLE + DONE, for a fixed time; operations per
second over all clients.
"""
from __future__ import annotations

import time

from bench import maildir_gen, procs
from bench.clients.imapwire import SyncIMAP
from bench.clients.spawn import run_once
from bench.context import DOMAIN, PASSWORD, Bench, module_ready, user
from bench.peers.dovecot import Dovecot
from bench.peers.mailhub import Mailhub
from bench.procs import MemorySampler
from bench.stats import CaseResult

METHODOLOGY = {
    "imap": " ".join(__doc__.split("\n\n")[1].split("Mixed load: ")[0].split()) + (
        " Times are wall seconds seen by a minimal raw client (it only splits responses, "
        "literals included), so client cost is small and equal for both."),
    "imapmix": "Mixed load: " + " ".join(__doc__.split("\n\n")[1].split("Mixed load: ")[1].split()),
}
SEARCH_FROM = "sender03@senders.example"


def big_ops(port: int, restart) -> dict[str, float]:
    """One round on one system; returns op -> seconds (and counts for cross-checks)."""
    restart()
    out = {}
    t0 = time.monotonic()
    c = SyncIMAP("127.0.0.1", port)
    c.command(f'LOGIN "{user()}" "{PASSWORD}"')
    lines, _ = c.command("SELECT INBOX")
    out["LOGIN+SELECT cold (after restart)"] = time.monotonic() - t0
    exists = next(int(ln.split()[1]) for ln in lines if ln.endswith(b" EXISTS\r\n"))
    c.command("LOGOUT")
    c.close()
    t0 = time.monotonic()
    c = SyncIMAP("127.0.0.1", port)
    c.command(f'LOGIN "{user()}" "{PASSWORD}"')
    c.command("SELECT INBOX")
    out["LOGIN+SELECT warm"] = time.monotonic() - t0
    t0 = time.monotonic()
    lines, _ = c.command("UID FETCH 1:* (FLAGS)")
    out["UID FETCH 1:* (FLAGS)"] = time.monotonic() - t0
    out["_fetch_lines"] = len(lines)
    t0 = time.monotonic()
    lines, _ = c.command(f"FETCH {max(1, exists - 499)}:{exists} (ENVELOPE)")
    out["FETCH ENVELOPE, last 500"] = time.monotonic() - t0
    out["_env_lines"] = len(lines)
    t0 = time.monotonic()
    lines, _ = c.command(f"UID SEARCH FROM {SEARCH_FROM}")
    out["UID SEARCH FROM"] = time.monotonic() - t0
    hits = sum(len(ln.split()) - 2 for ln in lines if ln.startswith(b"* SEARCH"))
    out["_search_hits"] = hits
    out["_exists"] = exists
    c.command("LOGOUT")
    c.close()
    return out


COLD_SAMPLES = 15


def login_select(port: int) -> float:
    """Time of connect + LOGIN + SELECT INBOX (then LOGOUT); on a server just restarted it is
    the cold case of ``big_ops``."""
    t0 = time.monotonic()
    c = SyncIMAP("127.0.0.1", port)
    c.command(f'LOGIN "{user()}" "{PASSWORD}"')
    c.command("SELECT INBOX")
    dt = time.monotonic() - t0
    c.command("LOGOUT")
    c.close()
    return dt


def run(b: Bench) -> None:
    why = module_ready("mailhub.imapserver.factory")
    if why:
        b.skipped["imap"] = why
        b.skipped["imapmix"] = why
        return
    big_n = 5000 if b.quick else 50000
    mix_counts = [10] if b.quick else [10, 50]
    mix_n = 100 if b.quick else 500
    mix_duration = 4 if b.quick else 15
    max_mix = max(mix_counts)
    users = {user(): PASSWORD}
    users.update({user(i): PASSWORD for i in range(max_mix)})

    mh = Mailhub(b.dir("imap-mailhub"), extra_toml="")
    mh.add_users(users)
    dc_root = b.dir("imap-dovecot")
    dc_mail = dc_root / "mail"
    dc = Dovecot(dc_root, dc_mail, users, procs.free_port(), procs.free_port(),
                 scheme=b.dovecot_scheme)
    dc.write_config()
    dc_dir = lambda u: dc_mail / DOMAIN / u.split("@")[0]
    b.log(f"imap: writing mailboxes ({big_n} + {max_mix} x {mix_n} messages, two copies)")
    maildir_gen.fill([mh.maildir(user()), dc_dir(user())], big_n, 4096, to=user())
    for i in range(max_mix):
        maildir_gen.fill([mh.maildir(user(i)), dc_dir(user(i))], mix_n, 4096, to=user(i))
    maildir_gen.chown_tree(dc_mail, dc.uid, dc.gid)
    try:
        mh.start()
        dc.start()
        # -- big INBOX -------------------------------------------------------------------
        first = {"mailhub": login_select(mh.port("imap")), "dovecot": login_select(dc.imap_port)}
        b.log(f"imap: first SELECT of {big_n} messages: {first}")

        def restart_mh():
            mh.stop()
            mh.start()

        def restart_dc():
            dc.stop()
            dc.start()

        per_op: dict[str, dict[str, list[float]]] = {}
        checks: dict[str, dict] = {}
        mm = MemorySampler(mh.pid)
        dm = MemorySampler(dc.pid, pss=True)
        status = "ok"
        # a round restarts both servers and takes ~2 s; its cases last 1-40 ms, so 7 rounds
        # at least (the first round also carries the first SEARCH of each server)
        rounds = max(b.rounds, 7)
        systems = (("mailhub", lambda: mh.port("imap"), restart_mh),
                   ("dovecot", lambda: dc.imap_port, restart_dc))
        try:
            for r in range(rounds):
                for system, port_fn, restart in systems:
                    sampler = mm if system == "mailhub" else dm
                    ops = big_ops_sampled(port_fn, restart, sampler)
                    for op, v in ops.items():
                        if op.startswith("_"):
                            checks.setdefault(system, {})[op[1:]] = v
                        else:
                            per_op.setdefault(op, {}).setdefault(system, []).append(v)
                    b.log(f"    round {r + 1}/{rounds} {system}: " + ", ".join(
                        f"{k}={v:.3f}" for k, v in ops.items() if not k.startswith("_")))
            # the cold LOGIN+SELECT is one Argon2id run on each side (~15-30 ms, the same
            # libsodium code) plus a few ms: a small margin under the machine's noise, so it
            # gets more samples than the other cases (cold-only rounds, alternating)
            cold = "LOGIN+SELECT cold (after restart)"
            extra = 0 if b.quick else max(0, COLD_SAMPLES - rounds)
            for r in range(extra):
                for system, port_fn, restart in systems:
                    restart()
                    v = login_select(port_fn())
                    per_op[cold][system].append(v)
                b.log(f"    cold-only round {r + 1}/{extra}: mailhub={per_op[cold]['mailhub'][-1]:.3f} "
                      f"dovecot={per_op[cold]['dovecot'][-1]:.3f}")
        except Exception as e:
            status = f"error: {e}"
            b.log(f"  error: {e}\n{mh.log()[-1500:]}")
        for op, vals in per_op.items():
            res = CaseResult("imap", f"{op} ({big_n:,} messages)", "s", False, "dovecot",
                             mailhub=vals.get("mailhub", []), peer_values=vals.get("dovecot", []),
                             status=status)
            res.mailhub_peak_rss_kb = mm.peak_rss_kb
            res.peer_peak_rss_kb, res.peer_peak_pss_kb = dm.peak_rss_kb, dm.peak_pss_kb
            if op.startswith("LOGIN") and dc.scheme != "PLAIN":
                res.notes = (f"mailhub runs one Argon2id, Dovecot one {{{dc.scheme}}} verification "
                             "(both caches empty after the restart)" if "cold" in op else
                             f"Dovecot verifies {{{dc.scheme}}} again (its auth cache keeps the "
                             "lookup, not the verification); mailhub answers from its cache")
            b.add(res)
        if per_op:
            first_res = b.results[-len(per_op)]
            first_res.extra = {"first SELECT ever (index build), s": {k: round(v, 3) for k, v in first.items()},
                               "responses (exists, FETCH lines, ENVELOPE lines, SEARCH hits)": {
                                   s: (c.get("exists"), c.get("fetch_lines"), c.get("env_lines"),
                                       c.get("search_hits")) for s, c in checks.items()}}
        elif status != "ok":
            b.add(CaseResult("imap", f"{big_n:,}-message INBOX", "s", False, "dovecot", status=status))
        if b.profile:
            from bench.profiling import profile_run
            b.profiles["imap big INBOX (warm ops)"] = profile_run(
                b, mh, lambda: big_ops(mh.port("imap"), lambda: None))

        # -- mixed load -----------------------------------------------------------------
        for n in mix_counts:
            label = f"{n} clients, {mix_n}-message mailboxes, {mix_duration} s"
            b.log(f"imapmix: {label}")
            res = CaseResult("imapmix", label, "ops/s", True, "dovecot")
            errors: dict[str, int] = {"mailhub": 0, "dovecot": 0}

            def mix(system, n=n):
                port = mh.port("imap") if system == "mailhub" else dc.imap_port
                us = [user(i) for i in range(n)]
                halves = [us[0::2], us[1::2]]
                out = run_once([{"mode": "imapmix", "host": "127.0.0.1", "port": port,
                                 "users": h, "password": PASSWORD, "duration": mix_duration,
                                 "seed": k} for k, h in enumerate(halves) if h],
                               timeout=mix_duration + 120)
                errs = sum(o["n_errors"] for o in out)
                errors[system] += errs
                if errs == sum(len(h) for h in halves):
                    raise RuntimeError(f"{system}: every client failed: {out[0]['errors']}")
                return sum(o["ops"] for o in out) / max(o["wall"] for o in out)

            with MemorySampler(mh.pid) as m2, MemorySampler(dc.pid, pss=True) as d2:
                try:
                    v = b.alternate([("mailhub", lambda: mix("mailhub")), ("dovecot", lambda: mix("dovecot"))])
                    res.mailhub, res.peer_values = v["mailhub"], v["dovecot"]
                except Exception as e:
                    res.status = f"error: {e}"
                    b.log(f"  error: {e}\n{mh.log()[-1500:]}")
            res.mailhub_peak_rss_kb = m2.peak_rss_kb
            res.peer_peak_rss_kb, res.peer_peak_pss_kb = d2.peak_rss_kb, d2.peak_pss_kb
            if any(errors.values()):
                res.notes = f"client sessions that failed: {errors}"
            b.add(res)
        if b.profile:
            from bench.profiling import profile_run
            b.profiles[f"imap mixed load, {mix_counts[-1]} clients"] = profile_run(
                b, mh, lambda: mix_profile(mh, mix_counts[-1], mix_duration))
    finally:
        mh.stop()
        dc.stop()


def mix_profile(mh, n, duration):
    us = [user(i) for i in range(n)]
    run_once([{"mode": "imapmix", "host": "127.0.0.1", "port": mh.port("imap"), "users": us,
               "password": PASSWORD, "duration": duration}], timeout=duration + 120)


def big_ops_sampled(port_fn, restart, sampler) -> dict:
    # the sampler follows the (restarted) server's pid via its callable
    def restart_and_track():
        restart()
    with MemorySampler(sampler.pid_fn, pss=sampler.pss) as m:
        ops = big_ops_port(port_fn, restart_and_track)
    sampler.peak_rss_kb = max(sampler.peak_rss_kb, m.peak_rss_kb)
    sampler.peak_pss_kb = max(sampler.peak_pss_kb, m.peak_pss_kb)
    return ops


def big_ops_port(port_fn, restart) -> dict:
    restart()
    return big_ops(port_fn(), lambda: None)
