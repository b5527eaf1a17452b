"""MessageSender: stream a message file to the client without holding it in memory.

The session registers itself as the transport's streaming producer once, at connection
time; when a large message is being sent it calls ``pump()``, which writes 64 KiB chunks
(dot-stuffed by a DotStuffer) until the transport says its buffer is full (the session's
``pauseProducing``) or the file ends. The session pumps again on ``resumeProducing``. So
a 50 MiB RETR to a slow client keeps about one transport buffer plus one chunk in memory.
"""
from __future__ import annotations

from typing import Callable, Iterator

from twisted.logger import Logger

from mailhub.pop3server.wire import DotStuffer

log = Logger(namespace="mailhub.pop3")


class MessageSender:
    def __init__(self, write: Callable[[bytes], None], f, chunks: Iterator[bytes],
                 done: Callable[[bool], None]):
        self.write = write
        self.file = f
        self.chunks = chunks
        self.stuffer = DotStuffer()
        self.done = done          # done(completed: bool), called exactly once
        self.finished = False

    def pump(self, paused: Callable[[], bool]) -> None:
        """Write chunks until ``paused()`` or the end of the message."""
        while not self.finished and not paused():
            try:
                chunk = next(self.chunks, None)
            except OSError as e:
                log.error("pop3 read error while sending a message: {err}", err=str(e))
                self.close(completed=False)
                return
            if chunk is None:
                self.close(completed=True)
                return
            self.write(self.stuffer.feed(chunk))

    def close(self, completed: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.file.close()
        except OSError:
            pass
        if completed:
            self.write(self.stuffer.finish())
        self.done(completed)
