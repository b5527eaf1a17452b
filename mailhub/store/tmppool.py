"""TmpPool: empty Maildir tmp/ files created ahead of time by a worker thread.

Creating a file is the one disk operation a message needs before its body can be written,
and on ext4 it waits for the journal: right after a group commit's fsyncs, an
``open(O_CREAT|O_EXCL)`` in tmp/ took 0.2–0.5 ms here, on the reactor thread, in the middle
of every SMTP DATA and IMAP APPEND. The pool keeps a few empty files per folder that
received mail recently, created by its own thread while the reactor waits for the client,
and ``MessageWriter`` takes one instead of creating a file inline (falling back to an inline
create when the pool has none). Refills run right after a group commit's batch (``kick``),
not while its fsyncs are in progress, unless a folder's pool ran empty.

Safety: a pooled file is an empty file in tmp/, which no reader ever looks at; the message
still becomes visible only through the group commit (fsync, rename into new/, directory
fsync). ``take`` checks that the file is still the one at its tmp/ path (a folder deleted,
renamed or swept meanwhile makes it a miss). Pooled files unused for ``max_idle`` seconds
and every pooled file at shutdown are removed; after a crash they are empty tmp/ files,
removed by the 36-hour tmp sweep like any other.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque

MAX_DEPTH = 8         # pooled files per folder, at most
MAX_FOLDERS = 256     # folders with a pool, at most (least recently used dropped)
MAX_IDLE = 600.0      # seconds a folder's pool is kept without a take


class _FolderPool:
    __slots__ = ("tmp_dir", "files", "target", "last_take")

    def __init__(self, tmp_dir: str):
        self.tmp_dir = tmp_dir
        self.files: deque = deque()   # (name, file object)
        self.target = 1               # grows by one on every miss, up to MAX_DEPTH
        self.last_take = time.monotonic()


class TmpPool:
    """``take(tmp_dir, new_name)`` -> (name, file) or None; refills in a worker thread."""

    def __init__(self, new_name, max_depth: int = MAX_DEPTH, max_folders: int = MAX_FOLDERS,
                 max_idle: float = MAX_IDLE):
        self._new_name = new_name     # () -> a unique file name
        self.max_depth = max_depth
        self.max_folders = max_folders
        self.max_idle = max_idle
        self._pools: OrderedDict[str, _FolderPool] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._wanted: set[str] = set()
        self._drops: list[_FolderPool] = []   # pools to empty, outside the lock
        self._filling: str | None = None       # the tmp/ dir a file is being created in
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.hits = 0      # statistics, for tests and the benchmark notes
        self.misses = 0

    # -- reactor side ----------------------------------------------------------------------
    def take(self, tmp_dir: str):
        """A pooled empty file of ``tmp_dir`` as (name, file object), or None (the caller
        creates one itself). Either way the folder is (re)filled in the background."""
        entry = None
        with self._lock:
            if self._stopped:
                return None
            pool = self._pools.get(tmp_dir)
            if pool is None:
                pool = self._pools[tmp_dir] = _FolderPool(tmp_dir)
                self._evict_locked()
            else:
                self._pools.move_to_end(tmp_dir)
            pool.last_take = time.monotonic()
            if pool.files:
                entry = pool.files.popleft()
            elif pool.target < self.max_depth:
                pool.target += 1
            self._wanted.add(tmp_dir)
            self._ensure_thread_locked()
            if not pool.files:
                # empty: refill now. Otherwise the refill waits for ``kick`` (the group
                # commit's end): a file create in the middle of a commit's fsyncs makes both
                # wait for the same journal
                self._wake.notify()
        if entry is not None and not _still_there(tmp_dir, entry):
            _discard(tmp_dir, entry)
            entry = None
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def kick(self) -> None:
        """Refill the folders taken from since the last refill (called by the group
        commit's thread after each batch, when the disk has just gone quiet)."""
        with self._lock:
            if self._wanted:
                self._wake.notify()

    def forget(self, path_prefix: str) -> None:
        """Drop the pools of folders under ``path_prefix`` (a folder or user tree that is
        being deleted, renamed or removed)."""
        prefix = path_prefix.rstrip("/") + "/"
        dropped = []
        with self._lock:
            for tmp_dir in [d for d in self._pools if (d + "/").startswith(prefix)]:
                dropped.append(self._pools.pop(tmp_dir))
                self._wanted.discard(tmp_dir)
            # a create under way in one of them finishes (and is discarded) before the
            # caller deletes or renames the folder
            self._wait_for_create_locked(prefix)
        for pool in dropped:
            _close_all(pool)

    def stop(self) -> None:
        """Remove every pooled file; later takes are misses."""
        with self._lock:
            self._stopped = True
            pools = list(self._pools.values()) + self._drops
            self._pools.clear()
            self._drops = []
            self._wanted.clear()
            self._wake.notify()
            # a create under way is discarded (the pool is stopped) before this returns
            self._wait_for_create_locked("/")
        for pool in pools:
            _close_all(pool)

    def _wait_for_create_locked(self, prefix: str) -> None:
        """Wait (lock held) until the worker is not creating a file under ``prefix``."""
        while self._filling is not None and (self._filling + "/").startswith(prefix):
            self._wake.wait(1.0)

    def pooled(self, tmp_dir: str) -> int:
        with self._lock:
            pool = self._pools.get(tmp_dir)
            return len(pool.files) if pool else 0

    # -- worker thread ---------------------------------------------------------------------
    def _ensure_thread_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mailhub-tmppool",
                                            daemon=True)
            self._thread.start()

    def _evict_locked(self) -> None:
        while len(self._pools) > self.max_folders:
            tmp_dir, pool = self._pools.popitem(last=False)
            self._wanted.discard(tmp_dir)
            self._drops.append(pool)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._wanted and not self._drops and not self._stopped:
                    if not self._wake.wait(timeout=self.max_idle / 4):
                        self._expire_locked()
                if self._stopped:
                    return
                wanted, self._wanted = self._wanted, set()
                drops, self._drops = self._drops, []
            for pool in drops:
                _close_all(pool)
            for tmp_dir in wanted:
                self._fill(tmp_dir)

    def _fill(self, tmp_dir: str) -> None:
        while True:
            with self._lock:
                pool = self._pools.get(tmp_dir)
                if pool is None or self._stopped or len(pool.files) >= pool.target:
                    return
                self._filling = tmp_dir  # forget() and stop() wait for this create
            name = self._new_name()
            try:
                try:
                    f = open(os.path.join(tmp_dir, name), "xb", buffering=65536)
                except OSError:
                    return  # folder gone or disk trouble: takes fall back to an inline create
                with self._lock:
                    pool = self._pools.get(tmp_dir)
                    if pool is not None and not self._stopped:
                        pool.files.append((name, f))
                        continue
                _discard(tmp_dir, (name, f))
                return
            finally:
                with self._lock:
                    self._filling = None
                    self._wake.notify_all()

    def _expire_locked(self) -> None:
        now = time.monotonic()
        for tmp_dir in [d for d, p in self._pools.items() if now - p.last_take > self.max_idle]:
            self._drops.append(self._pools.pop(tmp_dir))


def _still_there(tmp_dir: str, entry) -> bool:
    name, f = entry
    try:
        return os.stat(os.path.join(tmp_dir, name)).st_ino == os.fstat(f.fileno()).st_ino
    except OSError:
        return False


def _discard(tmp_dir: str, entry) -> None:
    name, f = entry
    try:
        f.close()
    except OSError:
        pass
    try:
        os.unlink(os.path.join(tmp_dir, name))
    except OSError:
        pass


def _close_all(pool: _FolderPool) -> None:
    while pool.files:
        _discard(pool.tmp_dir, pool.files.popleft())


__all__ = ["TmpPool"]
