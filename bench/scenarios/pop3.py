"""POP3: one poplib client doing UIDL + RETR of every message (mailhub vs Dovecot's POP3 on a
copy of the same Maildir), and many clients in parallel, one mailbox each."""
from __future__ import annotations

from bench import maildir_gen, procs
from bench.clients.spawn import run_once
from bench.context import DOMAIN, PASSWORD, Bench, module_ready, user
from bench.peers.dovecot import Dovecot
from bench.peers.mailhub import Mailhub
from bench.procs import MemorySampler
from bench.stats import CaseResult

METHODOLOGY = {"pop3": (
    "Mailboxes are written directly as Maildir files (4 KB messages, CRLF, identical names and "
    "bytes for both servers; Dovecot serves a copy owned by the `mail` user). One untimed "
    "session per mailbox warms both servers first (Dovecot builds its index and uidlist then). "
    "Single client: wall time of LOGIN, UIDL, RETR 1..n, QUIT with Python's poplib in a "
    "separate process. Parallel: N poplib clients (threads of one worker process), one mailbox "
    "each, released together; messages retrieved per second over the whole wall time.")}


def run(b: Bench) -> None:
    why = module_ready("mailhub.pop3server.factory")
    if why:
        b.skipped["pop3"] = why
        return
    single_n = 500 if b.quick else 2000
    par_clients = 10 if b.quick else 50
    par_n = 50 if b.quick else 200
    users = {user(): PASSWORD}
    users.update({user(i): PASSWORD for i in range(par_clients)})

    mh = Mailhub(b.dir("pop3-mailhub"))
    mh.add_users(users)
    dc_root = b.dir("pop3-dovecot")
    dc_mail = dc_root / "mail"
    dc = Dovecot(dc_root, dc_mail, users, procs.free_port(), procs.free_port(),
                 scheme=b.dovecot_scheme)
    dc.write_config()
    b.log(f"pop3: writing mailboxes ({single_n} + {par_clients} x {par_n} messages, two copies)")
    dc_dir = lambda u: dc_mail / DOMAIN / u.split("@")[0]
    maildir_gen.fill([mh.maildir(user()), dc_dir(user())], single_n, 4096, to=user())
    for i in range(par_clients):
        maildir_gen.fill([mh.maildir(user(i)), dc_dir(user(i))], par_n, 4096, to=user(i))
    maildir_gen.chown_tree(dc_mail, dc.uid, dc.gid)
    try:
        mh.start()
        dc.start()
        ports = {"mailhub": mh.port("pop3"), "dovecot": dc.pop3_port}

        def spec(system, us):
            return {"mode": "pop3", "host": "127.0.0.1", "port": ports[system], "users": us,
                    "password": PASSWORD, "timeout": 300}

        # warm-up (cold first session, reported as extra)
        cold = {}
        for system in ("mailhub", "dovecot"):
            r = run_once([spec(system, [user()])])[0]["sessions"][0]
            cold[system] = r.get("elapsed")
            run_once([spec(system, [user(i) for i in range(par_clients)])])

        def single(system):
            s = run_once([spec(system, [user()])])[0]["sessions"][0]
            if "error" in s or s["messages"] != single_n:
                raise RuntimeError(f"{system}: {s}")
            return s["elapsed"]

        def parallel(system):
            r = run_once([spec(system, [user(i) for i in range(par_clients)])])[0]
            errs = [s for s in r["sessions"] if "error" in s or s["messages"] != par_n]
            if errs:
                raise RuntimeError(f"{system}: {errs[:2]}")
            return par_clients * par_n / r["wall"]

        for label, fn, metric, hib, min_rounds in (
            # one session takes ~0.25-0.45 s and single sessions spread by +-30% on a shared
            # 2-core machine (where the client and the server land): 15 rounds at least
            (f"1 client, UIDL + RETR {single_n} x 4 KB", single, "s", False, 15),
            (f"{par_clients} clients x {par_n} x 4 KB, one mailbox each", parallel, "msg/s", True, 0),
        ):
            b.log(f"pop3: {label}")
            res = CaseResult("pop3", label, metric, hib, "dovecot")
            with MemorySampler(mh.pid) as mm, MemorySampler(dc.pid, pss=True) as dm:
                try:
                    v = b.alternate([("mailhub", lambda: fn("mailhub")), ("dovecot", lambda: fn("dovecot"))],
                                    min_rounds=min_rounds)
                    res.mailhub, res.peer_values = v["mailhub"], v["dovecot"]
                except Exception as e:
                    res.status = f"error: {e}"
                    b.log(f"  error: {e}\n{mh.log()[-1500:]}")
            res.mailhub_peak_rss_kb = mm.peak_rss_kb
            res.peer_peak_rss_kb, res.peer_peak_pss_kb, res.peer_procs = dm.peak_rss_kb, dm.peak_pss_kb, dm.peak_procs
            if dc.scheme != "PLAIN":
                res.notes = (f"each timed session logs in again: Dovecot verifies {{{dc.scheme}}} "
                             "every time (its auth cache keeps the lookup, not the verification), "
                             "mailhub answers from its 5-min cache of verified logins")
            if fn is single:
                res.extra = {"first (cold) session s": {k: round(v, 3) for k, v in cold.items() if v}}
            b.add(res)
        if b.profile:
            from bench.profiling import profile_run
            b.profiles["pop3 single client"] = profile_run(b, mh, lambda: single("mailhub"))
    finally:
        mh.stop()
        dc.stop()
