"""Group commit: make new message files durable in batches, off the reactor thread.

A single worker thread takes every commit request queued since its last round, fsyncs each
file, renames them from tmp/ into new/ (or cur/), then fsyncs each target directory once for
the whole batch. Sessions that finish DATA at the same time therefore share directory fsyncs
and one thread hand-off. The Deferred of a request fires (in the reactor thread) only once its
files are durable and visible; on any OSError nothing of that request stays visible.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from twisted.internet import defer, reactor as _reactor

from mailhub.fsutil import fsync_dir
from mailhub.store.interfaces import StoreError


class _Request:
    __slots__ = ("items", "deferred", "result", "error")

    def __init__(self, items, deferred):
        self.items = items  # list of (fileobj, tmp_path, final_path)
        self.deferred = deferred
        self.result = None
        self.error = None


class GroupCommitter:
    """Batches durable publication of files. ``submit(items)`` -> Deferred(list of paths)."""

    def __init__(self, reactor=None, fsync: bool = True):
        self._reactor = reactor or _reactor
        self._fsync = fsync
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0  # statistics, for tests and the benchmark
        self.committed = 0
        self.after_batch: list = []  # callables run in the commit thread after each batch

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="mailhub-commit", daemon=True)
            self._thread.start()
            trigger = getattr(self._reactor, "addSystemEventTrigger", None)
            if trigger is not None:
                trigger("after", "shutdown", self.stop)

    def submit(self, items: list[tuple]) -> defer.Deferred:
        d = defer.Deferred()
        with self._cond:
            self._queue.append(_Request(items, d))
            self._ensure_thread()
            self._cond.notify()
        return d

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue and self._stopping:
                    return
                batch = list(self._queue)
                self._queue.clear()
            self._process(batch)
            self.batches += 1
            for req in batch:
                self._reactor.callFromThread(self._fire, req)
            for hook in self.after_batch:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - a hook must never stop the committer
                    pass

    @staticmethod
    def _fire(req: _Request) -> None:
        if req.error is not None:
            req.deferred.errback(req.error)
        else:
            req.deferred.callback(req.result)

    def _process(self, batch: list[_Request]) -> None:
        dirs: set[str] = set()
        done: list[_Request] = []
        for req in batch:
            renamed: list[str] = []
            try:
                for f, tmp, final in req.items:
                    if f is not None and not f.closed:
                        f.flush()
                        if self._fsync:
                            os.fsync(f.fileno())
                        f.close()
                for f, tmp, final in req.items:
                    os.rename(tmp, final)
                    renamed.append(final)
                req.result = [final for _f, _t, final in req.items]
                dirs.update(os.path.dirname(final) for _f, _t, final in req.items)
                done.append(req)
            except OSError as e:
                # undo: nothing of a failed request may stay visible
                for path in renamed:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                for f, tmp, _final in req.items:
                    try:
                        if f is not None and not f.closed:
                            f.close()
                    except OSError:
                        pass
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
                req.error = StoreError(f"cannot store message: {e.strerror or e}")
        if self._fsync:
            for d in dirs:
                try:
                    fsync_dir(d)
                except OSError as e:
                    for req in done:
                        req.error = StoreError(f"cannot sync directory {d}: {e.strerror or e}")
                    break
        self.committed += sum(len(r.items) for r in done)

