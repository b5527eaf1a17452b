"""POP3 test helpers: put mail in a mailbox through the store, and build test messages.

``deliver(env, addr, messages)`` writes through ``MailStore.deliver_bytes`` in this process:
the store's group committer runs in its own thread and fires through ``callFromThread``, so
the tests give it a stand-in reactor that runs the callback in that thread and wait on it.
"""
from __future__ import annotations

import threading

from mailhub.store import MailStore
from mailhub.store.commit import GroupCommitter

PASSWORD = "pop-secret-1"


class _DirectReactor:
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def deliver(env, address: str, messages: list[bytes], folder: str = "INBOX") -> list[str]:
    """Store messages (CRLF bytes) for a user; returns their keys (the POP3 UIDLs)."""
    store = MailStore(env.data_dir / "mail", committer=GroupCommitter(_DirectReactor(), fsync=False))
    keys: list[str] = []
    for data in messages:
        done = threading.Event()
        result: list = []
        d = store.deliver_bytes(address, data, folder)
        d.addBoth(lambda r: (result.append(r), done.set()))
        assert done.wait(30), "store commit did not finish"
        if not isinstance(result[0], str):
            result[0].raiseException()
        keys.append(result[0])
    store.committer.stop()
    return keys


def make_message(i: int, size: int = 0, subject: str | None = None) -> bytes:
    head = (f"From: sender{i}@example.org\r\nTo: user@pop.test\r\n"
            f"Subject: {subject or f'message {i}'}\r\nMessage-ID: <m{i}@example.org>\r\n\r\n")
    body = f"Body of message {i}.\r\n"
    if size > len(head) + len(body):
        filler = "x" * 70 + "\r\n"
        n = (size - len(head) - len(body)) // len(filler)
        body += filler * n
    return (head + body).encode()
