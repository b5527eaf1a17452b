"""MessageSender: stream a message file to the client without holding it in memory.

A pull producer (``registerProducer(sender, streaming=False)``): the transport asks for the
next chunk only when its write buffer has drained, so a 50 MiB RETR to a slow client keeps
about one chunk in memory. Each chunk goes through a DotStuffer; at the end the sender
unregisters, writes the terminator and tells the session it may read the next command.
"""
from __future__ import annotations

from typing import Callable, Iterator

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.pop3server.wire import DotStuffer

log = Logger(namespace="mailhub.pop3")


@implementer(IPullProducer)
class MessageSender:
    def __init__(self, transport, f, chunks: Iterator[bytes], done: Callable[[bool], None],
                 progress: Callable[[], None] | None = None):
        self.transport = transport
        self.file = f
        self.chunks = chunks
        self.stuffer = DotStuffer()
        self.done = done          # done(completed: bool)
        self.progress = progress  # called per chunk (resets the idle timer)
        self.finished = False

    def start(self) -> None:
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.finished:
            return
        try:
            chunk = next(self.chunks, None)
        except OSError as e:
            log.error("pop3 read error while sending a message: {err}", err=str(e))
            self._close()
            self.transport.unregisterProducer()
            # the response cannot be completed truthfully: drop the connection
            self.transport.abortConnection() if hasattr(self.transport, "abortConnection") \
                else self.transport.loseConnection()
            self.done(False)
            return
        if chunk is None:
            self._close()
            self.transport.unregisterProducer()
            self.transport.write(self.stuffer.finish())
            self.done(True)
            return
        self.transport.write(self.stuffer.feed(chunk))
        if self.progress is not None:
            self.progress()

    def stopProducing(self) -> None:
        if not self.finished:
            self._close()
            self.done(False)

    def _close(self) -> None:
        self.finished = True
        try:
            self.file.close()
        except OSError:
            pass
