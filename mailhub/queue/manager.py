"""OutboundQueue: the queue manager (IOutboundQueue), like Postfix's qmgr + smtp client.

- ``enqueue`` moves the message into the spool and writes its envelope; the fsyncs of
  concurrent submissions are batched in one worker thread (group commit), and the Deferred
  fires only once both files and their directories are durable.
- A due message is split into jobs, one per destination (recipient domain, or the
  smarthost); jobs wait in a per-destination ready queue. Workers, at most
  ``max_connections`` in all and ``max_connections_per_domain`` per destination, each own one
  connection to the destination's best reachable host and take job after job from that
  queue (connection reuse), keeping an idle connection for a moment in case more comes.
- Per recipient: 2xx -> sent (recorded durably before anything else about the message, so
  it is never sent twice), 5xx -> failed, 4xx -> stays pending. Connection failures and
  session-level 4xx move the job to the next MX host. When all jobs of a message are done,
  it leaves the queue (no recipient pending) or is rescheduled with backoff; after
  ``max_age`` the pending ones fail. Failed recipients get one RFC 3464 DSN.
- ``flush``/``remove`` act at once; the CLI reaches them through ``control.py``.
"""
from __future__ import annotations

import heapq
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.config import parse_duration
from mailhub.dns import DNSPermanentError, NullMX
from mailhub.fsutil import fsync_dir
from mailhub.queue.bounce import build_dsn
from mailhub.queue.envelope import (
    FAILED, PENDING, SENT, Envelope, Recipient, header_section, needs_smtputf8, new_queue_id,
    retry_delay, wire_address,
)
from mailhub.queue.interfaces import IOutboundQueue
from mailhub.queue.smtpclient import ClientSession, SessionError
from mailhub.queue.smtpwire import MessageFile, Reply, is_8bit
from mailhub.queue.spool import Spool

log = Logger(namespace="mailhub.queue")

MAX_RCPTS_PER_TRANSACTION = 100
IDLE_KEEP = 2.0  # seconds an idle connection waits for more mail to the same destination
STREAM_THRESHOLD = 256 * 1024  # larger messages are streamed from the spool, not read whole


@dataclass
class Job:
    qid: str
    dest: str
    rcpts: list[Recipient]
    retried_fresh: bool = False


@dataclass
class _Enq:
    qid: str
    sender: str
    recipients: list[str]
    path: Path | None
    data: bytes | None
    dkim_domain: str | None
    kind: str
    d: defer.Deferred = field(default_factory=defer.Deferred)
    env: Envelope | None = None


@implementer(IOutboundQueue)
class OutboundQueue:
    def __init__(self, cfg, reactor, spool: Spool, router, *, signer=None, mda=None,
                 directory=None):
        self.cfg = cfg
        self.reactor = reactor
        self.spool = spool
        self.router = router
        self.signer = signer
        self.mda = mda
        self.directory = directory
        q = cfg["queue"]
        self.max_age = q["max_age"]
        self.delay_warning = q["delay_warning"]
        self.max_total = max(1, q["max_connections"])
        self.max_per_dest = max(1, q["max_connections_per_domain"])
        self.schedule = [parse_duration(s, "queue.retry_schedule") for s in q["retry_schedule"]]
        self.hostname = cfg.hostname
        self.envs: dict[str, Envelope] = {}
        self.inflight: dict[str, int] = {}          # qid -> outstanding jobs
        self.ready: dict[str, deque[Job]] = {}      # dest -> jobs
        self.workers: dict[str, int] = {}           # dest -> running workers
        self.idle: dict[str, list[defer.Deferred]] = {}
        self.total_workers = 0
        self._heap: list[tuple[float, str]] = []
        self._timer = None
        self._enq_pending: list[_Enq] = []
        self._enq_running = False
        self._writes: dict[str, defer.Deferred] = {}
        self._dirsync_pending = False
        self._dirsync_running = False
        self.running = False
        self.delivered = 0
        self._drained: list[defer.Deferred] = []
        self._removals: list[str] = []
        self._removals_idle: list[defer.Deferred] = []

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        self.spool.create()
        n = self.spool.clean_debris()
        envs, bad = self.spool.scan()
        for name in bad:
            log.warn("queue: unreadable envelope {name} left in {dir}", name=name,
                     dir=str(self.spool.env_dir))
        for env in envs:
            self.envs[env.id] = env
            self._schedule(env.id, env.next_attempt)
        self.running = True
        log.info("queue started: {n} message(s) queued{debris}", n=len(envs),
                 debris=f", {n} partial file(s) removed" if n else "")
        self._arm()

    def stop(self, grace: float = 5.0) -> defer.Deferred:
        """Start no new transaction; let those under way finish (at most ``grace`` seconds,
        so a remote 250 is recorded rather than lost to a restart) and the envelope writes
        land. Fires when done."""
        self.running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self.idle = self.idle, {}
        for waiters in waiting.values():
            for d in waiters:
                if not d.called:
                    d.callback(None)
        drained = defer.Deferred()
        if self.total_workers == 0:
            drained.callback(None)
        else:
            self._drained.append(drained)
            timer = self.reactor.callLater(grace, lambda: drained.called or drained.callback(None))
            drained.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        def settle(_):
            writes = list(self._writes.values())
            d = defer.DeferredList(writes, consumeErrors=True) if writes else defer.succeed(None)
            return d.addCallback(lambda _: self._removals_done())
        drained.addCallback(settle)
        return drained

    # ---------------------------------------------------------------- enqueue
    def enqueue(self, sender, recipients, message_path, dkim_domain=None):
        if dkim_domain and self.directory is not None and not self.directory.has_domain(
                dkim_domain):
            log.warn("not DKIM-signing for {domain}: not a served domain", domain=dkim_domain)
            dkim_domain = None
        return self._enqueue(_Enq(new_queue_id(), sender or "", list(recipients),
                                  Path(message_path), None, dkim_domain, "mail"))

    def enqueue_bytes(self, sender, recipients, data: bytes, dkim_domain=None, kind="mail"):
        return self._enqueue(_Enq(new_queue_id(), sender or "", list(recipients), None, data,
                                  dkim_domain, kind))

    def _enqueue(self, item: _Enq) -> defer.Deferred:
        if not item.recipients:
            return defer.fail(ValueError("no recipients"))
        self._enq_pending.append(item)
        if not self._enq_running:
            self._enq_batch()
        return item.d

    def _enq_batch(self) -> None:
        batch, self._enq_pending = self._enq_pending, []
        self._enq_running = True
        d = threads.deferToThread(self._write_batch, batch)

        def done(results):
            for item, err in zip(batch, results):
                if err is not None:
                    log.error("queue: cannot queue message from <{sender}>: {err}",
                              sender=item.sender, err=err)
                    item.d.errback(err)
                    continue
                env = item.env
                self.envs[env.id] = env
                log.info("queued {qid}: from=<{sender}> to={rcpts} size={size}{dkim}",
                         qid=env.id, sender=env.sender,
                         rcpts=",".join(r.addr for r in env.recipients), size=env.size,
                         dkim=f" dkim={env.dkim_domain}" if env.prefix else "")
                self._schedule(env.id, 0)
                item.d.callback(env.id)
            self._arm()

        def failed(f):
            for item in batch:
                item.d.errback(f)

        d.addCallbacks(done, failed)

        def next_batch(_):
            self._enq_running = False
            if self._enq_pending:
                self._enq_batch()

        d.addBoth(next_batch)

    def _write_batch(self, batch: list[_Enq]) -> list:
        """In a thread: sign, move/write, fsync each message and envelope; dirs once."""
        results: list = []
        for item in batch:
            try:
                results.append(self._write_one(item))
            except Exception as e:  # noqa: BLE001
                for p in (self.spool.message_path(item.qid), self.spool.envelope_path(item.qid)):
                    p.unlink(missing_ok=True)
                results.append(e)
        if any(r is None for r in results):
            self.spool.sync_dirs()
        return results

    def _write_one(self, item: _Enq) -> None:
        prefix = b""
        if item.dkim_domain and self.signer is not None:
            try:
                if item.data is not None:
                    prefix = self.signer.sign(item.dkim_domain, item.data)
                else:  # streamed: a 50 MB message is not read into memory to be signed
                    prefix = self.signer.sign_file(item.dkim_domain, item.path)
            except Exception as e:  # noqa: BLE001  (a signing failure must not lose mail)
                log.warn("DKIM signing for {domain} failed: {err}; sending unsigned",
                         domain=item.dkim_domain, err=e)
        if item.data is not None:
            self.spool.write_message(item.qid, item.data)
            size = len(item.data)
        else:
            size = self.spool.take_message(item.qid, item.path)
        env = Envelope(
            id=item.qid, sender=item.sender,
            recipients=[Recipient(a) for a in dict.fromkeys(item.recipients)],
            dkim_domain=item.dkim_domain, prefix=prefix.decode("utf-8", "replace"),
            size=size + len(prefix), kind=item.kind,
        )
        self.spool.write_envelope(env, sync=True, sync_dir=False)
        item.env = env
        return None

    # ---------------------------------------------------------------- scheduling
    def _schedule(self, qid: str, when: float) -> None:
        heapq.heappush(self._heap, (when, qid))

    def _arm(self) -> None:
        if not self.running:
            return
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            when, qid = heapq.heappop(self._heap)
            env = self.envs.get(qid)
            if env is None or qid in self.inflight or env.next_attempt > now:
                continue  # gone, busy, or a stale entry of a rescheduled message
            self._start_message(env)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap:
            delay = max(0.0, self._heap[0][0] - time.time())
            self._timer = self.reactor.callLater(delay, self._arm)

    def flush(self) -> int:
        """Retry every queued message now; returns how many were due."""
        n = 0
        for env in self.envs.values():
            if env.id not in self.inflight:
                env.next_attempt = 0
                self._schedule(env.id, 0)
                n += 1
        log.info("queue flush: {n} message(s) to retry now", n=n)
        self._arm()
        return n

    def remove(self, queue_id) -> None:
        env = self.envs.pop(queue_id, None)
        if env is None:
            raise KeyError(queue_id)
        self._remove_files(queue_id, now=True)
        log.info("removed {qid} from the queue (by the administrator)", qid=queue_id)

    def load(self, queue_id: str) -> None:
        """Take up a message the CLI wrote into the spool (``mailhub queue inject``)."""
        if queue_id in self.envs:
            return
        env = self.spool.read_envelope(queue_id)
        self.envs[env.id] = env
        log.info("queued {qid}: from=<{sender}> to={rcpts} size={size} (injected)", qid=env.id,
                 sender=env.sender, rcpts=",".join(r.addr for r in env.recipients), size=env.size)
        self._schedule(env.id, env.next_attempt)
        self._arm()

    def listing(self) -> list[Envelope]:
        return sorted(self.envs.values(), key=lambda e: e.id)

    # ---------------------------------------------------------------- a message's attempt
    def _start_message(self, env: Envelope) -> None:
        jobs: dict[str, list[Recipient]] = {}
        for r in env.pending():
            jobs.setdefault(self.router.destination(r.domain), []).append(r)
        if not jobs:
            self._finish(env)
            return
        count = 0
        for dest, rcpts in jobs.items():
            for i in range(0, len(rcpts), MAX_RCPTS_PER_TRANSACTION):
                self.ready.setdefault(dest, deque()).append(
                    Job(env.id, dest, rcpts[i:i + MAX_RCPTS_PER_TRANSACTION]))
                count += 1
        self.inflight[env.id] = count
        for dest in jobs:
            self._pump(dest)

    def _pump(self, dest: str) -> None:
        if not self.running:
            return
        q = self.ready.get(dest)
        while q:
            waiters = self.idle.get(dest)
            if waiters:
                waiters.pop(0).callback(True)  # an idle worker takes a job synchronously
                continue
            if (self.workers.get(dest, 0) >= self.max_per_dest or
                    self.total_workers >= self.max_total or
                    self.workers.get(dest, 0) >= len(q)):
                return
            self.workers[dest] = self.workers.get(dest, 0) + 1
            self.total_workers += 1
            self._worker(dest).addErrback(
                lambda f, dest=dest: log.failure("queue worker for {dest} crashed", f, dest=dest))

    def _next_job(self, dest: str) -> Job | None:
        if not self.running:
            return None  # stopping: the jobs stay queued on disk
        q = self.ready.get(dest)
        while q:
            job = q.popleft()
            if job.qid in self.envs:
                return job
            self._job_done(job)  # removed meanwhile
        return None

    @defer.inlineCallbacks
    def _wait_for_job(self, dest: str):
        job = self._next_job(dest)
        if job is not None or not self.running:
            return job
        if self.total_workers >= self.max_total and any(
                q for other, q in self.ready.items() if other != dest):
            return None  # at the global limit: free the slot for a destination that waits
        d = defer.Deferred()
        self.idle.setdefault(dest, []).append(d)
        timer = self.reactor.callLater(IDLE_KEEP, lambda: d.called or d.callback(None))
        yield d
        if timer.active():
            timer.cancel()
        waiters = self.idle.get(dest, [])
        if d in waiters:
            waiters.remove(d)
        return self._next_job(dest)

    @defer.inlineCallbacks
    def _connect(self, dest: str, targets: list, idx: int):
        """A session to the first reachable target from ``idx``: (session, idx, error)."""
        last_err: SessionError | None = None
        while idx < len(targets):
            t = targets[idx]
            try:
                session = yield ClientSession(self.reactor, t.host, t.ip, t.port, t.opts).open()
                return session, idx, None
            except SessionError as e:
                last_err = e
                log.info("{dest}: {err}", dest=dest, err=str(e))
                if e.permanent:
                    break
                idx += 1
        return None, idx, last_err or SessionError("no host to connect to", "4.4.1")

    @defer.inlineCallbacks
    def _worker(self, dest: str):
        session: ClientSession | None = None
        job = None
        try:
            job = self._next_job(dest)
            if job is None:
                return
            try:
                targets = yield self.router.targets(dest)
            except NullMX as e:
                job = self._fail_dest(job, dest, str(e), "5.1.10")
                return
            except DNSPermanentError as e:
                job = self._fail_dest(job, dest, str(e), "5.1.2")
                return
            except Exception as e:  # noqa: BLE001  (DNSTemporaryError and the unexpected)
                job = self._defer_dest(job, dest, str(e), "4.4.3")
                return
            idx = 0
            while job is not None:
                if session is None or not session.alive:
                    session, idx, err = yield self._connect(dest, targets, idx)
                    if session is None:
                        if err.permanent:
                            job = self._fail_dest(job, dest, str(err), err.status)
                        else:
                            job = self._defer_dest(job, dest, str(err), err.status)
                        return
                reused = session.messages > 0
                outcome = yield self._deliver(session, job)
                if outcome is not None:
                    # nothing accepted and only temporary refusals: same job, next host
                    if outcome == "abort":
                        session.abort()
                    else:
                        yield session.close()
                    session = None
                    if outcome == "abort" and reused and not job.retried_fresh:
                        # a cached connection the server had dropped: same host, new one
                        job.retried_fresh = True
                        continue
                    idx += 1
                    if idx < len(targets):
                        continue
                    job = self._job_done(job)
                    return  # every host tried; jobs still waiting get a fresh worker
                job = self._job_done(job)
                job = yield self._wait_for_job(dest)
        except Exception:  # noqa: BLE001  (a bug must not leave the message stuck)
            log.failure("queue worker for {dest} failed", dest=dest)
            if job is not None:
                self._set(job, [r for r in job.rcpts if r.state == PENDING], PENDING, "4.3.0",
                          "internal error during delivery (see the server log)", "")
                self._job_done(job)
        finally:
            if session is not None:
                try:
                    yield session.close()
                except Exception:  # noqa: BLE001
                    pass
            self.workers[dest] -= 1
            self.total_workers -= 1
            if not self.workers[dest]:
                del self.workers[dest]
            for other in list(self.ready):
                if self.ready[other]:
                    self._pump(other)
                elif not self.workers.get(other):
                    del self.ready[other]
            if not self.total_workers and self._drained:
                drained, self._drained = self._drained, []
                for d in drained:
                    if not d.called:
                        d.callback(None)

    def _fail_dest(self, job: Job, dest: str, why: str, status: str) -> None:
        """Fail this job and every job waiting for the same destination."""
        while job is not None:
            self._set(job, job.rcpts, FAILED, status, why, "")
            self._job_done(job)
            job = self._next_job(dest)
        return None

    def _defer_dest(self, job: Job, dest: str, why: str, status: str) -> None:
        while job is not None:
            self._set(job, job.rcpts, PENDING, status, why, "")
            self._job_done(job)
            job = self._next_job(dest)
        return None

    def _set(self, job: Job, rcpts: list[Recipient], state: str, status: str, diag: str,
             mta: str) -> None:
        now = time.time()
        for r in rcpts:
            r.state, r.status, r.diag, r.mta, r.when = state, status, diag, mta, now
            if state == SENT:
                log.info("delivered {qid} to <{rcpt}> via {mta}: {diag}", qid=job.qid,
                         rcpt=r.addr, mta=mta, diag=diag)
                self.delivered += 1
            elif state == FAILED:
                log.info("failed {qid} to <{rcpt}>: {status} {diag}", qid=job.qid, rcpt=r.addr,
                         status=status, diag=diag)
            else:
                log.info("deferred {qid} to <{rcpt}>: {status} {diag}", qid=job.qid,
                         rcpt=r.addr, status=status, diag=diag)
        env = self.envs.get(job.qid)
        if env is not None and state != SENT:
            env.last_error = diag

    @defer.inlineCallbacks
    def _deliver(self, session: ClientSession, job: Job):
        """One transaction for one job. Returns "retry"/"abort" to try the next host with
        the same job (nothing was accepted), else None (results recorded)."""
        env = self.envs.get(job.qid)
        if env is None:  # removed while we connected
            return None
        mta = session.host
        prefix = env.prefix.encode("utf-8")
        try:
            path = self.spool.message_path(job.qid)
            if os.path.getsize(path) > STREAM_THRESHOLD:  # sent from the file in chunks
                data = MessageFile(prefix, path)
                size, head, eight_bit = data.size, data.head(), data.is_8bit()
            else:
                data = prefix + self.spool.read_message(job.qid)
                size, head, eight_bit = len(data), data, is_8bit(data)
        except OSError as e:
            self._set(job, job.rcpts, PENDING, "4.3.0", f"cannot read the queued message: {e}", "")
            return None
        addrs = [wire_address(r.addr) for r in job.rcpts]
        sender = wire_address(env.sender)
        utf8 = needs_smtputf8(sender, addrs, header_section(head))
        if utf8 and "SMTPUTF8" not in session.ext:
            self._set(job, job.rcpts, FAILED, "5.6.7",
                      f"the message needs SMTPUTF8 (internationalised addresses or headers) "
                      f"and {session.label} does not support it", mta)
            return None
        limit = session.limit()
        if limit and size > limit:
            self._set(job, job.rcpts, FAILED, "5.3.4",
                      f"message size {size} exceeds the limit of {session.label} ({limit})",
                      mta)
            return None
        try:
            res = yield session.send(sender, addrs, data, eight_bit=eight_bit, smtputf8=utf8)
        except SessionError as e:
            log.info("{qid}: {label}: {err}", qid=job.qid, label=session.label, err=str(e))
            self._set(job, job.rcpts, PENDING, e.status, str(e), mta)
            return "abort"
        if res.mail is not None and res.mail.code != 250:
            reply = res.mail
            if reply.transient:
                self._set(job, job.rcpts, PENDING, reply.status(), str(reply), mta)
                return "retry"
            self._set(job, job.rcpts, FAILED, reply.status(), str(reply), mta)
            return None
        accepted = []
        for r, reply in zip(job.rcpts, res.rcpt):
            if reply.positive:
                accepted.append(r)
            elif reply.transient:
                self._set(job, [r], PENDING, reply.status(), str(reply), mta)
            else:
                self._set(job, [r], FAILED, reply.status(), str(reply), mta)
        if not accepted:
            if any(r.state == PENDING for r in job.rcpts):
                return "retry"
            return None
        final: Reply | None = res.data
        if final is None:
            self._set(job, accepted, PENDING, "4.4.2", "no reply to the end of data", mta)
        elif final.code == 250:
            self._set(job, accepted, SENT, final.status() if final.enhanced else "2.0.0",
                      str(final), mta)
            self._persist_progress(env)
        elif final.transient:
            self._set(job, accepted, PENDING, final.status(), str(final), mta)
            if len(accepted) == len(job.rcpts):
                return "retry"
        else:
            self._set(job, accepted, FAILED, final.status(), str(final), mta)
        return None

    def _persist_progress(self, env: Envelope) -> None:
        """After some recipients were accepted, while others of the message are still in
        flight, record the sent ones so a crash does not send to them twice."""
        if self.inflight.get(env.id, 0) > 1:
            self._write_envelope(env)

    def _job_done(self, job: Job) -> None:
        """Account for a finished job (returns None, for ``job = self._job_done(job)``)."""
        left = self.inflight.get(job.qid, 0) - 1
        if left > 0:
            self.inflight[job.qid] = left
            return None
        self.inflight.pop(job.qid, None)
        env = self.envs.get(job.qid)
        if env is not None:
            self._finish(env)
        return None

    # ---------------------------------------------------------------- end of an attempt
    def _finish(self, env: Envelope) -> None:
        now = time.time()
        pending = env.pending()
        if pending:
            env.attempts += 1
            if now - env.created >= self.max_age:
                for r in pending:
                    r.state, r.status, r.when = FAILED, "4.4.7", now
                    r.diag = (f"message expired after {int(now - env.created)}s in the queue; "
                              f"last error: {r.diag or env.last_error}")
                pending = []
        failed = [r for r in env.recipients if r.state == FAILED and not r.notified]
        if failed:
            self._bounce(env, failed, "failed")
            for r in failed:
                r.notified = True
        if not pending:
            del self.envs[env.id]
            self._remove_files(env.id)
            if len(env.recipients) > 1 or env.recipients[0].state != SENT:
                # (a single delivered recipient already has its "delivered" line)
                log.info("removed {qid}: {sent} sent, {failed} failed", qid=env.id,
                         sent=sum(r.state == SENT for r in env.recipients),
                         failed=sum(r.state == FAILED for r in env.recipients))
            return
        env.next_attempt = now + retry_delay(self.schedule, env.attempts)
        if (self.delay_warning and not env.warned and env.sender
                and now - env.created >= self.delay_warning and env.kind != "dsn"):
            self._bounce(env, pending, "delayed")
            env.warned = True
        self._write_envelope(env)
        self._schedule(env.id, env.next_attempt)
        log.info("{qid}: {n} recipient(s) deferred, attempt {a}, next try in {s}s",
                 qid=env.id, n=len(pending), a=env.attempts, s=int(env.next_attempt - now))
        self._arm()

    def _write_envelope(self, env: Envelope) -> None:
        """Persist (tmp + fsync + rename + dir fsync) in a thread, in order per message."""
        snapshot = Envelope.from_json(env.to_json())

        def write(_):
            if env.id not in self.envs:
                return None  # removed meanwhile: do not bring it back
            return threads.deferToThread(self.spool.write_envelope, snapshot)

        self._after_writes(env.id, write)

    def _after_writes(self, qid: str, fn) -> None:
        prev = self._writes.get(qid)
        start = prev if prev is not None else defer.succeed(None)
        d = defer.Deferred()
        start.addBoth(fn).addBoth(d.callback)
        d.addErrback(lambda f: log.failure("queue: cannot update the spool files of {qid}", f,
                                           qid=qid))
        self._writes[qid] = d

        def cleanup(_):
            if self._writes.get(qid) is d:
                del self._writes[qid]
        d.addBoth(cleanup)

    def _remove_files(self, qid: str, now: bool = False) -> None:
        """Unlink a finished message's files. Delivery removals are batched into the
        directory-fsync thread (no unlink in the reactor); ``now`` (the administrator's
        remove) unlinks before returning."""
        def rm(_):
            if now:
                self.spool.remove(qid)
            else:
                self._removals.append(qid)
            self._sync_env_dir()
        if qid in self._writes:
            self._after_writes(qid, rm)
        else:
            rm(None)

    def _sync_env_dir(self) -> None:
        """Make removals durable: unlink the batch and fsync the directory once for all
        removals since the last round."""
        self._dirsync_pending = True
        if self._dirsync_running:
            return

        def run():
            batch, self._removals = self._removals, []
            self._dirsync_pending = False
            self._dirsync_running = True
            d = threads.deferToThread(self._remove_batch, batch)
            d.addErrback(lambda f: log.failure("queue: removing finished messages failed", f))

            def done(_):
                self._dirsync_running = False
                if self._dirsync_pending:
                    run()
                elif self._removals_idle:
                    waiting, self._removals_idle = self._removals_idle, []
                    for w in waiting:
                        w.callback(None)
            d.addBoth(done)

        run()

    def _remove_batch(self, qids: list[str]) -> None:
        for qid in qids:
            self.spool.remove(qid)
        fsync_dir(self.spool.env_dir)

    def _removals_done(self) -> defer.Deferred:
        if not self._dirsync_running and not self._dirsync_pending:
            return defer.succeed(None)
        d = defer.Deferred()
        self._removals_idle.append(d)
        return d

    # ---------------------------------------------------------------- bounces
    def _bounce(self, env: Envelope, rcpts: list[Recipient], action: str) -> None:
        if not env.sender:
            log.info("{qid}: not bouncing a message from the null sender <> ({n} failed)",
                     qid=env.id, n=len(rcpts))
            return
        try:
            with open(self.spool.message_path(env.id), "rb") as f:
                head = header_section(f.read(256 * 1024))
        except OSError:
            head = b""
        retry_until = env.created + self.max_age if action == "delayed" else None
        dsn = build_dsn(env, rcpts, head, self.hostname, action, retry_until)
        self.send_notification(env.sender, dsn, env.id, action)

    def send_notification(self, to: str, dsn: bytes, qid: str, action: str) -> None:
        domain = to.rpartition("@")[2]
        local, remote = [], []
        if self.directory is not None and self.directory.has_domain(domain):
            for kind, addr in self.directory.resolve(to):
                (local if kind == "local" else remote).append(addr)
            if not local and not remote:
                log.warn("{qid}: DSN ({action}) to <{to}> dropped: no such local address",
                         qid=qid, action=action, to=to)
                return
        else:
            remote = [to]
        if local and self.mda is not None:
            d = self.mda.deliver("", local, dsn)
            d.addCallback(lambda keys: log.info("{qid}: DSN ({action}) delivered to {to}",
                                                qid=qid, action=action, to=",".join(local)))
            d.addErrback(lambda f: log.failure("{qid}: DSN delivery failed", f, qid=qid))
        if remote:
            d = self.enqueue_bytes("", remote, dsn, kind="dsn")
            d.addCallback(lambda new: log.info("{qid}: DSN ({action}) queued as {new}", qid=qid,
                                               action=action, new=new))
            d.addErrback(lambda f: log.failure("{qid}: cannot queue the DSN", f, qid=qid))


__all__ = ["OutboundQueue"]
