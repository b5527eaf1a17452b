"""The POP3 maildrop: a snapshot of a user's INBOX taken at login, and the mailbox lock.

``Maildrop`` numbers the messages present at login (1..n, oldest first) and keeps that view
for the whole session: mail arriving later waits for the next session, deletions are only
marks until ``commit()`` (QUIT, the UPDATE state), and a message that disappeared meanwhile
(expunged over IMAP) is reported as gone by ``open()`` and skipped by ``commit()``.

``MailboxLocks`` enforces one POP3 session per mailbox. It is an in-process table (mailhub
runs as a single server process): it dies with the process, so neither a crash nor SIGKILL
can leave a mailbox locked.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from mailhub.pop3server.wire import uidl_for_key
from mailhub.store.interfaces import FolderError

log = Logger(namespace="mailhub.pop3")


class MailboxLocks:
    """address -> the session holding it."""

    def __init__(self):
        self._held: dict[str, Any] = {}

    def acquire(self, address: str, owner: Any) -> bool:
        holder = self._held.get(address)
        if holder is not None and holder is not owner:
            return False
        self._held[address] = owner
        return True

    def release(self, address: str, owner: Any) -> None:
        if self._held.get(address) is owner:
            del self._held[address]

    def held(self, address: str) -> bool:
        return address in self._held


class Maildrop:
    """The snapshot of one INBOX for one session (message numbers are 1-based)."""

    def __init__(self, store: Any, address: str):
        self.address = address
        try:
            self.folder = store.folder(address, "INBOX")
        except FolderError:
            self.folder = None  # a user whose tree does not exist yet: an empty maildrop
        self.infos = self.folder.scan() if self.folder is not None else []
        base = str(self.folder.path) if self.folder is not None else ""
        sizes = []
        for info in self.infos:
            size = info.size
            if size is None:
                try:
                    size = os.stat(os.path.join(base, info.subdir, info.filename)).st_size
                except OSError:
                    size = 0
            sizes.append(size)
        self.sizes = sizes
        self._uidls: list[str] | None = None
        self.deleted = bytearray(len(self.infos))  # 1 = marked for deletion
        self.retrieved = bytearray(len(self.infos))  # 1 = sent whole by RETR
        self.base = base

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def uidls(self) -> list[str]:
        if self._uidls is None:
            self._uidls = [uidl_for_key(i.key) for i in self.infos]
        return self._uidls

    def stat(self) -> tuple[int, int]:
        """(messages, octets) not marked deleted."""
        n = total = 0
        for size, gone in zip(self.sizes, self.deleted):
            if not gone:
                n += 1
                total += size
        return n, total

    def open_fd(self, index: int) -> int | None:
        """A read-only file descriptor of message ``index`` (0-based), or None if the message
        no longer exists. A message renamed meanwhile (an IMAP flag change moves it within
        new/ and cur/) is found again by its key."""
        info = self.infos[index]
        try:
            return os.open(f"{self.base}/{info.subdir}/{info.filename}", os.O_RDONLY)
        except FileNotFoundError:
            found = self.folder.find(info.key)
            if found is None:
                return None
            info.subdir, info.filename, info.flags = found.subdir, found.filename, found.flags
            try:
                return os.open(f"{self.base}/{info.subdir}/{info.filename}", os.O_RDONLY)
            except FileNotFoundError:
                return None

    def commit(self, mark_seen: bool = True) -> tuple[int, int, list[str]]:
        """UPDATE state: remove the messages marked deleted, flag retrieved ones \\Seen.
        Returns (removed, already_gone, errors)."""
        removed = gone = 0
        errors: list[str] = []
        if self.folder is None:
            return 0, 0, errors
        for i, info in enumerate(self.infos):
            try:
                if self.deleted[i]:
                    if self.folder.remove(info, notify=False):
                        removed += 1
                        log.info("pop3 deleted {address} {key}", address=self.address,
                                 key=info.key)
                    else:
                        gone += 1
                elif mark_seen and self.retrieved[i] and "S" not in info.flags:
                    self.folder.set_flags(info, info.flags + "S")
            except OSError as e:
                errors.append(f"{info.key}: {e.strerror or e}")
            except Exception as e:  # StoreError from set_flags
                errors.append(f"{info.key}: {e}")
        if removed:
            self.folder.store.events.notify(self.folder.address, self.folder.name, "expunge")
        return removed, gone, errors
