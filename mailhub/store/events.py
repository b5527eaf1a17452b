"""MailboxEvents: in-process notification that a user's folder changed.

The store publishes after every commit/flag change/expunge; IMAP sessions (IDLE) and other
listeners subscribe per (user, folder). Callbacks run in the reactor thread, synchronously.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from twisted.logger import Logger

log = Logger()

Callback = Callable[[str, str, str], None]  # (address, folder, what)


class MailboxEvents:
    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], dict[int, Callback]] = defaultdict(dict)
        self._next = 0

    def subscribe(self, address: str, folder: str, callback: Callback) -> tuple:
        """Call ``callback(address, folder, what)`` on each change; returns a token."""
        self._next += 1
        key = (address, folder.upper() if folder.upper() == "INBOX" else folder)
        self._subs[key][self._next] = callback
        return (key, self._next)

    def unsubscribe(self, token: tuple) -> None:
        key, n = token
        subs = self._subs.get(key)
        if subs is not None:
            subs.pop(n, None)
            if not subs:
                del self._subs[key]

    def notify(self, address: str, folder: str, what: str = "changed") -> None:
        key = (address, folder.upper() if folder.upper() == "INBOX" else folder)
        for cb in list(self._subs.get(key, {}).values()):
            try:
                cb(address, folder, what)
            except Exception:
                log.failure("mailbox listener failed for {address} {folder}", address=address, folder=folder)

    def listeners(self, address: str, folder: str) -> int:
        key = (address, folder.upper() if folder.upper() == "INBOX" else folder)
        return len(self._subs.get(key, {}))
