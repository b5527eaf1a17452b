"""IMAP IDLE at scale: N clients logged in, INBOX selected, in IDLE at once (one asyncio
worker process holds them all); then, per round, a few APPENDs from an extra connection to
users that have idlers, timing each idler's ``* n EXISTS``. Measured: memory of the server
with everyone idling (mailhub: one process's RSS; Dovecot: the sum over its processes, PSS in
brackets, with imap_hibernate_timeout = 1s so idle sessions move to imap-hibernate as a
Dovecot admin would configure it for many IDLE clients), push latency (from sending the
APPEND to the EXISTS line, so it includes the APPEND's own durable write), and the time to
connect + LOGIN + SELECT + IDLE everyone (at most 100 connections in progress at once)."""
from __future__ import annotations

import time

from bench import maildir_gen, procs
from bench.clients.spawn import Workers
from bench.context import DOMAIN, PASSWORD, Bench, module_ready, user
from bench.peers.dovecot import Dovecot, raise_nofile
from bench.peers.mailhub import Mailhub
from bench.stats import CaseResult

METHODOLOGY = {"idle": " ".join(__doc__.split())}


def run(b: Bench) -> None:
    why = module_ready("mailhub.imapserver.factory")
    if why:
        b.skipped["idle"] = why
        return
    n_clients = 300 if b.quick else 10000
    n_users = 5 if b.quick else 20
    raise_nofile(65536)
    users = {user(i): PASSWORD for i in range(n_users)}
    mh = Mailhub(b.dir("idle-mailhub"), extra_toml="")
    mh.add_users(users)
    dc_root = b.dir("idle-dovecot")
    dc_mail = dc_root / "mail"
    dc = Dovecot(dc_root, dc_mail, users, procs.free_port(), procs.free_port(), hibernate=True,
                 max_clients=n_clients + 50, scheme=b.idle_dovecot_scheme)
    dc.write_config()
    for u in users:
        maildir_gen.fill([mh.maildir(u), dc_mail / DOMAIN / u.split("@")[0]], 20, 2048, to=u)
    maildir_gen.chown_tree(dc_mail, dc.uid, dc.gid)

    label = f"{n_clients:,} clients in IDLE ({n_users} users)"
    mem = CaseResult("idle", f"{label}: server memory", "MB", False, "dovecot")
    lat_med = CaseResult("idle", f"{label}: push latency, median", "ms", False, "dovecot")
    lat_max = CaseResult("idle", f"{label}: push latency, max", "ms", False, "dovecot")
    setup = CaseResult("idle", f"{label}: connect+LOGIN+SELECT+IDLE all", "s", False, "dovecot")
    notes: dict[str, list] = {"mailhub": [], "dovecot": []}

    def one(system: str) -> dict:
        if system == "mailhub":
            mh.start()
            port, pid_fn = mh.port("imap"), mh.pid
        else:
            dc.start()
            port, pid_fn = dc.imap_port, dc.pid
        try:
            spec = {"mode": "idle", "host": "127.0.0.1", "port": port, "users": list(users),
                    "password": PASSWORD, "clients": n_clients, "pushes": 2 if b.quick else 3,
                    "connect_concurrency": 100, "setup_timeout": 900, "push_timeout": 10}
            with Workers([spec], timeout=1200) as w:
                ready = w.wait_ready()[0]
                time.sleep(3.0 if system == "dovecot" else 1.0)  # let Dovecot hibernate them
                rss, pss, nprocs = procs.tree_memory(pid_fn())
                w.go()
                result = w.results()[0]
            if ready.get("n_errors") or result.get("missed"):
                notes[system].append(f"{ready.get('n_errors')} failed to connect "
                                     f"({ready.get('errors', [])[:1]}), {result.get('missed')} pushes missed")
            b.log(f"    {system}: {ready['idling']} idling, rss {rss // 1024} MB (pss {pss // 1024} MB, "
                  f"{nprocs} procs), setup {ready['setup_s']:.1f}s, push median "
                  f"{result.get('latency_median_ms', -1):.1f} ms max {result.get('latency_max_ms', -1):.1f} ms")
            return {"rss": rss, "pss": pss, "procs": nprocs, "ready": ready, "result": result}
        finally:
            mh.stop() if system == "mailhub" else dc.stop()

    b.log(f"idle: {label}")
    try:
        for r in range(b.rounds):
            for system in ("mailhub", "dovecot"):
                o = one(system)
                mb = (o["rss"] if system == "mailhub" else o["pss"]) / 1024
                med = o["result"].get("latency_median_ms")
                mx = o["result"].get("latency_max_ms")
                for res, v in ((mem, mb), (lat_med, med), (lat_max, mx), (setup, o["ready"]["setup_s"])):
                    if v is None:
                        continue
                    (res.mailhub if system == "mailhub" else res.peer_values).append(v)
                if system == "mailhub":
                    mem.mailhub_peak_rss_kb = max(mem.mailhub_peak_rss_kb, o["rss"])
                else:
                    mem.peer_peak_rss_kb = max(mem.peer_peak_rss_kb, o["rss"])
                    mem.peer_peak_pss_kb = max(mem.peer_peak_pss_kb, o["pss"])
                    mem.peer_procs = max(mem.peer_procs, o["procs"])
    except Exception as e:
        for res in (mem, lat_med, lat_max, setup):
            res.status = f"error: {e}"
        b.log(f"  error: {e}\n{mh.log()[-1500:]}\n{dc.log()[-1500:]}")
    finally:
        mh.stop()
        dc.stop()
    mem.notes = "memory compared as mailhub RSS vs Dovecot PSS summed over its processes"
    mem.target_abs = 500.0
    lat_max.target_abs = 100.0
    for sys_, ns in notes.items():
        if ns:
            setup.notes += f"{sys_}: {'; '.join(ns[:2])} "
    for res in (mem, lat_med, lat_max, setup):
        b.add(res)
