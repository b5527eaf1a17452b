"""Spool: where an incoming message body goes while DATA/BDAT is being received.

A message is kept in memory while it is small (``memory_limit``, 256 KiB by default) and
spills into a file under ``<data_dir>/spool/`` as soon as it grows past that, so a 50 MiB
message costs the server a bounded amount of memory, while the common small message costs
no file at all on its way to the Maildir (the MDA writes it straight into the mailbox's
tmp/ and fsyncs it there). The spool file is not fsynced: nothing is acknowledged on its
strength; the 250 waits for the Maildir commit or the queue's own fsync.

``MaildirSink`` is the short cut for a message with a single local recipient: it writes
straight into that mailbox's tmp/ file (opened by the MDA), so there is no copy at all.

``export_copy()`` gives the outbound queue its own file (the queue takes ownership and moves
it). ``discard()`` removes whatever is left. Stale spool files from a crash are removed at
start-up by ``clean_spool_dir``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mailhub.store.interfaces import StoreError

DEFAULT_MEMORY_LIMIT = 256 * 1024


def clean_spool_dir(spool_dir: Path) -> int:
    """Remove files left by a previous run (nothing in the spool was ever acknowledged)."""
    removed = 0
    try:
        entries = list(os.scandir(spool_dir))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed += 1
        except OSError:
            pass
    return removed


class SpoolSink:
    """Collects the decoded message; memory first, a spool file past ``memory_limit``."""

    def __init__(self, spool_dir: Path, name: str, memory_limit: int = DEFAULT_MEMORY_LIMIT):
        self.spool_dir = spool_dir
        self.name = name
        self.memory_limit = memory_limit
        self.size = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._file = None
        self.path: Path | None = None
        self._exports: list[Path] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self._file is None:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > self.memory_limit:
                self._spill()
            return
        try:
            self._file.write(data)
        except OSError as e:
            raise StoreError(f"cannot write spool file: {e.strerror}") from e

    def _spill(self) -> None:
        self.path = self.spool_dir / self.name
        try:
            self._file = open(self.path, "wb", buffering=256 * 1024)
            self._file.writelines(self._chunks)
        except OSError as e:
            raise StoreError(f"cannot write spool file: {e.strerror}") from e
        self._chunks = []
        self._buffered = 0

    @property
    def in_memory(self) -> bool:
        return self._file is None

    def finish(self) -> bytes | Path:
        """The complete message: bytes when small, else the (closed) spool file path."""
        if self._file is None:
            data = b"".join(self._chunks)
            self._chunks = [data]
            return data
        try:
            self._file.close()
        except OSError as e:
            raise StoreError(f"cannot write spool file: {e.strerror}") from e
        return self.path

    def export_copy(self) -> Path:
        """A separate file with the message, for a consumer that takes ownership of it."""
        target = self.spool_dir / f"{self.name}.q{len(self._exports)}"
        self._exports.append(target)
        try:
            if self._file is None:
                with open(target, "wb") as f:
                    f.writelines(self._chunks)
            else:
                shutil.copyfile(self.path, target)
        except OSError as e:
            raise StoreError(f"cannot write spool file: {e.strerror}") from e
        return target

    def discard(self) -> None:
        """Forget the message and remove every file still here (exports the consumer did
        not take are removed too)."""
        self._chunks = []
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass
        for p in ([self.path] if self.path else []) + self._exports:
            try:
                os.unlink(p)
            except OSError:
                pass
        self._exports = []


class MaildirSink:
    """Writes the message straight into one Maildir tmp/ file (``DeliveryAgent.open_copy``)."""

    in_memory = False

    def __init__(self, recipient: str, writer):
        self.recipient = recipient
        self.writer = writer
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)  # StoreError on failure (the writer is then aborted)
            self.size += len(data)

    def finish(self):
        return self.writer

    def discard(self) -> None:
        """Remove the tmp/ file unless it was published (abort only touches tmp/)."""
        self.writer.abort()
