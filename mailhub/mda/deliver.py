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


def trace_headers(sender: str, recipient: str) -> bytes:
    rp = sender.replace("\r", "").replace("\n", "")
    return f"Return-Path: <{rp}>\r\nDelivered-To: {recipient}\r\n".encode("utf-8")


class DeliveryAgent:
    def __init__(self, store, directory=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.store = store
        self.directory = directory
        self.reactor = reactor

    def deliver(self, sender: str, recipients: list[str], source: bytes | str | os.PathLike,
                prefix: bytes = b"", folder: str = "INBOX") -> defer.Deferred:
        """Deliver to local user addresses. ``source`` is the message bytes or a file path
        (CRLF line ends). Fires with [(address, key)] once all copies are durable.

        Creating and filling the tmp/ files happens in a worker thread: a file create can
        block for a millisecond or more on a busy disk, and on the reactor thread that would
        stall every other session. The group commit then makes all copies durable at once."""
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            return defer.succeed([])
        if self.reactor.running:
            d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                          self._prepare, sender, recipients, source, prefix,
                                          folder)
        else:  # no reactor loop (scripts, tests): do it inline
            d = defer.maybeDeferred(self._prepare, sender, recipients, source, prefix, folder)
        d.addCallback(self.store.commit)
        d.addCallback(lambda keys: list(zip(recipients, keys)))
        return d

    def open_copy(self, sender: str, recipient: str, folder: str = "INBOX"):
        """Start the copy for one recipient that the caller fills itself (SMTP streams DATA
        straight into it when a message has a single local recipient: no spool copy and one
        thread hand-off less). Returns the store's MessageWriter, Return-Path and
        Delivered-To already written; StoreError if it cannot be created. Publish it with
        ``commit_copies``, or ``abort()`` it."""
        w = self.store.new_message(recipient, folder)
        try:
            w.write(trace_headers(sender, recipient))
        except Exception:
            w.abort()
            raise
        return w

    def commit_copies(self, copies: list[tuple[str, object]]) -> defer.Deferred:
        """Publish writers from ``open_copy`` durably: fires with [(address, key)]."""
        writers = [w for _addr, w in copies]
        d = self.store.commit(writers)
        d.addCallback(lambda keys: [(a, k) for (a, _w), k in zip(copies, keys)])
        return d

    def _prepare(self, sender, recipients, source, prefix, folder):
        """(worker thread) One filled MessageWriter per recipient, or StoreError and nothing
        left behind."""
        writers = []
        try:
            for rcpt in recipients:
                w = self.store.new_message(rcpt, folder)
                writers.append(w)
                w.write(trace_headers(sender, rcpt) + prefix)
            if isinstance(source, (bytes, bytearray, memoryview)):
                data = bytes(source)
                for w in writers:
                    w.write(data)
            else:
                with open(source, "rb") as f:
                    for w in writers:
                        f.seek(0)
                        _copy(f, w)
            for w in writers:
                w.file.flush()  # the write syscalls here, not in commit() on the reactor
        except Exception as e:
            for w in writers:
                w.abort()
            if isinstance(e, StoreError):
                raise
            if isinstance(e, OSError):
                raise StoreError(f"cannot store message: {e.strerror or e}") from e
            raise StoreError(str(e)) from e
        return writers


def _copy(src: BinaryIO, writer) -> None:
    while True:
        chunk = src.read(65536)
        if not chunk:
            break
        writer.write(chunk)


__all__ = ["DeliveryAgent", "trace_headers"]
