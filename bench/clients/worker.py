"""Worker process: ``python -m bench.clients.worker '<json spec>'``.

Prints one JSON line ``{"ready": ...}`` when set up, waits for ``go`` on stdin (so many
workers start together, and the parent can sample memory between the two), runs, prints
``{"result": ...}`` and exits. Every loop is bounded by a count and a deadline.

Modes: ``pop3`` (UIDL + RETR all, one mailbox per listed user, sequential per client, the
clients of one worker in threads), ``imapmix`` (asyncio clients, one mailbox each: SELECT,
FETCH, STORE, APPEND, EXPUNGE, IDLE in a loop for a fixed duration), ``idle`` (N asyncio
clients LOGIN+SELECT+IDLE, then timed APPENDs from an extra connection; push latencies).
"""
from __future__ import annotations

import asyncio
import json
import poplib
import random
import sys
import threading
import time

from bench.clients.imapwire import AsyncIMAP


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_go(timeout: float = 600) -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        sys.exit(0)


# -- POP3 ---------------------------------------------------------------------------------
def pop3_session(host: str, port: int, user: str, pw: str, deadline: float) -> dict:
    t0 = time.monotonic()
    p = poplib.POP3(host, port, timeout=120)
    p.user(user)
    p.pass_(pw)
    _, listing, _ = p.uidl()
    n = len(listing)
    nbytes = 0
    for i in range(1, n + 1):
        if time.monotonic() > deadline:
            break
        _, lines, octets = p.retr(i)
        nbytes += octets
    p.quit()
    return {"elapsed": time.monotonic() - t0, "messages": n, "bytes": nbytes}


def run_pop3(spec: dict) -> dict:
    deadline = time.monotonic() + spec.get("timeout", 300)
    results: list = [None] * len(spec["users"])

    def one(i, user):
        try:
            results[i] = pop3_session(spec["host"], spec["port"], user, spec["password"], deadline)
        except Exception as e:  # reported, counted as an error by the parent
            results[i] = {"error": repr(e)}

    emit({"ready": True})
    wait_go()
    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i, u)) for i, u in enumerate(spec["users"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.monotonic() - t0, "sessions": results}


# -- IMAP mixed load ----------------------------------------------------------------------
APPEND_MSG = None


async def mix_client(spec: dict, user: str, stop_at: float, counts: dict, errors: list,
                     rng: random.Random) -> None:
    c = AsyncIMAP()
    try:
        await c.connect(spec["host"], spec["port"])
        await c.command(f'LOGIN "{user}" "{spec["password"]}"')
        counts["login"] = counts.get("login", 0) + 1
        msg = APPEND_MSG
        while time.monotonic() < stop_at:
            lines, _ = await c.command("SELECT INBOX")
            exists = 0
            for ln in lines:
                if ln.endswith(b" EXISTS\r\n"):
                    exists = int(ln.split()[1])
            counts["select"] = counts.get("select", 0) + 1
            if exists:
                lo = rng.randint(1, max(1, exists - 9))
                await c.command(f"FETCH {lo}:{min(exists, lo + 9)} (FLAGS ENVELOPE RFC822.SIZE)")
                counts["fetch"] = counts.get("fetch", 0) + 1
                await c.command(f"FETCH {rng.randint(1, exists)} BODY.PEEK[]")
                counts["fetch_body"] = counts.get("fetch_body", 0) + 1
                await c.command(f"STORE {rng.randint(1, exists)} +FLAGS (\\Flagged)")
                counts["store"] = counts.get("store", 0) + 1
            await c.command("APPEND INBOX (\\Seen)", literal=msg)
            counts["append"] = counts.get("append", 0) + 1
            lines, _ = await c.command("NOOP")
            total = exists + 1
            for ln in lines:
                if ln.endswith(b" EXISTS\r\n"):
                    total = int(ln.split()[1])
            await c.command(f"STORE {total} +FLAGS.SILENT (\\Deleted)")
            await c.command("EXPUNGE")
            counts["expunge"] = counts.get("expunge", 0) + 1
            await c.idle_start()
            await c.idle_done()
            counts["idle"] = counts.get("idle", 0) + 1
        await c.command("LOGOUT")
    except Exception as e:
        errors.append(f"{user}: {e!r}")
    finally:
        c.close()


def run_imapmix(spec: dict) -> dict:
    global APPEND_MSG
    from bench.maildir_gen import make_message
    APPEND_MSG = make_message(999_999, spec.get("size", 4096))
    emit({"ready": True})
    wait_go()
    counts: dict = {}
    errors: list = []

    async def main():
        stop_at = time.monotonic() + spec["duration"]
        rng = random.Random(spec.get("seed", 1))
        await asyncio.wait_for(asyncio.gather(*[
            mix_client(spec, u, stop_at, counts, errors, random.Random(rng.random()))
            for u in spec["users"]]), spec["duration"] + 60)

    t0 = time.monotonic()
    asyncio.run(main())
    wall = time.monotonic() - t0
    ops = sum(v for k, v in counts.items() if k != "login")
    return {"wall": wall, "counts": counts, "ops": ops, "errors": errors[:5],
            "n_errors": len(errors)}


# -- IDLE ---------------------------------------------------------------------------------
def run_idle(spec: dict) -> dict:
    from bench.maildir_gen import make_message
    users = spec["users"]
    n = spec["clients"]
    host, port, pw = spec["host"], spec["port"], spec["password"]
    conc = spec.get("connect_concurrency", 200)
    msg = make_message(888_888, 2048)

    async def main():
        clients: list[tuple[str, AsyncIMAP]] = []
        errors: list[str] = []
        sem = asyncio.Semaphore(conc)

        async def open_one(i):
            user = users[i % len(users)]
            c = AsyncIMAP()
            async with sem:
                try:
                    await c.connect(host, port)
                    await c.command(f'LOGIN "{user}" "{pw}"')
                    await c.command("SELECT INBOX")
                    await c.idle_start()
                    clients.append((user, c))
                except Exception as e:
                    errors.append(repr(e))
                    c.close()

        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*[open_one(i) for i in range(n)]),
                               spec.get("setup_timeout", 600))
        setup = time.monotonic() - t0
        emit({"ready": True, "idling": len(clients), "setup_s": setup, "errors": errors[:5],
              "n_errors": len(errors)})
        await asyncio.get_running_loop().run_in_executor(None, wait_go)
        latencies = []
        missed = 0
        for target in users[: spec.get("pushes", 3)]:
            watchers = [c for u, c in clients if u == target]
            pusher = AsyncIMAP()
            await pusher.connect(host, port)
            await pusher.command(f'LOGIN "{target}" "{pw}"')
            waits = [asyncio.ensure_future(c.wait_untagged(b"EXISTS", spec.get("push_timeout", 10)))
                     for c in watchers]
            await asyncio.sleep(0.2)
            t_send = time.time()
            await pusher.command("APPEND INBOX", literal=msg)
            for w in waits:
                try:
                    seen = await w
                    latencies.append((seen - t_send) * 1000)
                except (asyncio.TimeoutError, Exception):
                    missed += 1
            await pusher.command("LOGOUT")
            pusher.close()
            await asyncio.sleep(0.2)
        for _, c in clients:
            c.close()
        latencies.sort()
        return {"setup_s": setup, "idling": len(clients), "n_errors": len(errors),
                "latency_ms": latencies, "missed": missed}

    out = asyncio.run(main())
    lat = out.pop("latency_ms")
    if lat:
        out["latency_median_ms"] = lat[len(lat) // 2]
        out["latency_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        out["latency_max_ms"] = lat[-1]
        out["latency_min_ms"] = lat[0]
    out["pushed_to"] = len(lat)
    return out


def main() -> None:
    from bench.peers.dovecot import raise_nofile
    raise_nofile(65536)
    spec = json.loads(sys.argv[1])
    mode = spec["mode"]
    fn = {"pop3": run_pop3, "imapmix": run_imapmix, "idle": run_idle}[mode]
    emit({"result": fn(spec)})


if __name__ == "__main__":
    main()
