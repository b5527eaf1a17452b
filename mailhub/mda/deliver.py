"""DeliveryAgent: write one copy of a message per local mailbox, durably, in one group commit.

Each copy gets ``Return-Path:`` and ``Delivered-To:`` prepended (plus any trace headers the
caller passes, e.g. SMTP's ``Received:``). All copies of one message are committed together:
the Deferred fires only when every copy is fsynced and visible, and on failure none is left
visible. The store notifies MailboxEvents, so IMAP IDLE sessions learn of the mail at once.
"""
from __future__ import annotations

import os
from typing import BinaryIO

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailhub.store.interfaces import StoreError

log = Logger()
THREAD_COPY_THRESHOLD = 1024 * 1024


def trace_headers(sender: str, recipient: str) -> bytes:
    rp = sender.replace("\r", "").replace("\n", "")
    return f"Return-Path: <{rp}>\r\nDelivered-To: {recipient}\r\n".encode("utf-8")


class DeliveryAgent:
    def __init__(self, store, directory=None):
        self.store = store
        self.directory = directory

    def deliver(self, sender: str, recipients: list[str], source: bytes | str | os.PathLike,
                prefix: bytes = b"", folder: str = "INBOX") -> defer.Deferred:
        """Deliver to local user addresses. ``source`` is the message bytes or a file path
        (CRLF line ends). Fires with [(address, key)] once all copies are durable."""
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            return defer.succeed([])
        writers = []
        try:
            for rcpt in recipients:
                w = self.store.new_message(rcpt, folder)
                writers.append(w)
                w.write(trace_headers(sender, rcpt) + prefix)
        except Exception as e:
            for w in writers:
                w.abort()
            return defer.fail(e if isinstance(e, StoreError) else StoreError(str(e)))

        def fill() -> None:
            if isinstance(source, (bytes, bytearray, memoryview)):
                for w in writers:
                    w.write(bytes(source))
                return
            with open(source, "rb") as f:
                for w in writers:
                    f.seek(0)
                    _copy(f, w)

        size = len(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.path.getsize(source)
        if size > THREAD_COPY_THRESHOLD:
            d = threads.deferToThread(fill)
        else:
            d = defer.maybeDeferred(fill)

        def failed(f):
            for w in writers:
                w.abort()
            if f.check(StoreError):
                return f
            if f.check(OSError):
                raise StoreError(f"cannot store message: {f.value.strerror or f.value}")
            return f

        def commit(_):
            return self.store.commit(writers)

        d.addCallbacks(commit, failed)
        d.addCallback(lambda keys: list(zip(recipients, keys)))
        return d


def _copy(src: BinaryIO, writer) -> None:
    while True:
        chunk = src.read(65536)
        if not chunk:
            break
        writer.write(chunk)


__all__ = ["DeliveryAgent", "trace_headers"]
