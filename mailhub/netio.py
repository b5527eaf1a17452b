"""Sending small replies at once on a plain TCP transport (shared by the SMTP, POP3 and IMAP
servers).

Twisted's ``transport.write()`` always buffers and sends on the reactor's next turn, which
costs an ``epoll_ctl`` pair (start/stop writing) and a loop iteration per reply. A
request/response client (smtp-source, poplib, fetchmail, an IMAP client) waits on every
reply, so that round is pure latency. ``write_now`` sends directly when nothing is queued in
the transport, and hands only what the socket did not take to ``write()``, which keeps the
byte order, the transport's producer/back-pressure logic and its error handling. TLS
transports and anything that is not Twisted's TCP server transport use ``write()`` unchanged.
"""
from __future__ import annotations

from twisted.internet.tcp import Server as _TCPServer


def can_write_now(transport) -> bool:
    """True when ``write_now`` on this transport may send without the reactor."""
    return type(transport) is _TCPServer and not transport.TLS


def write_now(transport, data: bytes) -> None:
    """Write ``data``, sending it at once when a plain TCP transport has nothing queued."""
    if type(transport) is _TCPServer and not transport.TLS and transport.connected \
            and not transport.disconnecting and not transport._tempDataBuffer \
            and transport.offset == len(transport.dataBuffer):
        try:
            n = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            n = 0  # write() below; the reactor reports the error on its next attempt
        if n < len(data):
            transport.write(data[n:] if n else data)
        return
    transport.write(data)


__all__ = ["can_write_now", "write_now"]
