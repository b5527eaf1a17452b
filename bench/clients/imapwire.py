"""A minimal IMAP client that reads responses exactly (literals included) and parses nothing
else: the cost of the client stays the same, and small, for both servers.

``split_response(data, tag)`` is sans-IO (bytes in, the split response out), so the sync
(socket) and asyncio clients share it and tests feed it bytes.
"""
from __future__ import annotations

import asyncio
import re
import socket
import time

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n")  # a line ending in a literal marker


class IMAPError(Exception):
    pass


def _line_start(data: bytes, needle: bytes, start: int, end: int) -> int:
    """Offset of the first line in ``data[start:end]`` (``start`` begins a line) that starts
    with ``needle``, or -1."""
    i = data.find(needle, start, end)
    while i >= 0:
        if i == start or (i >= start + 2 and data[i - 2:i] == b"\r\n"):
            return i
        i = data.find(needle, i + 1, end)
    return -1


def _terminator(data: bytes, start: int, end: int, lead: bytes) -> int:
    """Offset of the first line in ``data[start:end]`` that ends a response: the tagged status
    (``lead`` = tag + space) or a continuation request (``+``); -1 if none."""
    found = [i for i in (_line_start(data, lead, start, end), _line_start(data, b"+", start, end))
             if i >= 0]
    return min(found) if found else -1


def _lines(data: bytes, start: int, end: int) -> list[bytes]:
    """The CRLF-terminated lines of ``data[start:end]`` (which ends with CRLF), CRLF kept."""
    if start >= end:
        return []
    out = data[start:end].splitlines(keepends=True)  # cut in C; also at a bare CR or LF,
    if len(out) == data.count(b"\r\n", start, end):  # which IMAP text never has: check
        return out
    return list(map(b"%s\r\n".__mod__, data[start:end - 2].split(b"\r\n")))


def split_response(data: bytes, tag: bytes) -> tuple[list[bytes], bytes, int] | None:
    """Given buffered bytes, find the complete response to ``tag``.

    Returns (untagged lines with literals inlined, tagged status line, bytes consumed) or
    None if more data is needed. Continuation requests (``+ ...``) end a response too (the
    status line is then the ``+`` line). The lines between literals are cut and searched by
    bytes methods, not one by one in Python: 50,000 FETCH lines take a few ms, so the client's
    share of a timed command stays small.
    """
    lead = tag + b" "
    n = len(data)
    lines: list[bytes] = []
    pos = 0
    cur = b""  # a line continued after a literal
    while True:
        m = _LITERAL.search(data, pos)
        stop = m.end() if m else n
        eol = data.find(b"\r\n", pos, stop)
        if eol < 0:
            return None
        if m is not None and eol + 2 == stop:  # this line ends with the literal's marker
            size = int(m.group(1))
            if n - stop < size:
                return None
            cur += data[pos:stop + size]
            pos = stop + size
            continue
        first = cur + data[pos:eol + 2]
        cur = b""
        if first.startswith(lead) or first.startswith(b"+"):
            return lines, first, eol + 2
        lines.append(first)
        pos = eol + 2
        # the whole lines that follow, up to the line holding the next literal marker
        k = data.rfind(b"\r\n", pos, m.start() if m else n)
        full_end = k + 2 if k >= 0 else pos
        t = _terminator(data, pos, full_end, lead)
        if t >= 0:
            e = data.find(b"\r\n", t) + 2
            lines.extend(_lines(data, pos, t))
            return lines, data[t:e], e
        lines.extend(_lines(data, pos, full_end))
        pos = full_end
        if m is None:
            return None


def response_may_be_complete(buf: bytes, tag: bytes) -> bool:
    """Cheap test before ``split_response``: the buffer ends a line and holds a line starting
    with the tag or ``+`` (a big response arrives in many reads; only the last is parsed)."""
    lead = tag + b" "
    return buf.endswith(b"\r\n") and (
        buf.startswith(lead) or buf.startswith(b"+") or b"\r\n" + lead in buf or b"\r\n+" in buf)


class SyncIMAP:
    """Blocking client over a socket with TCP_NODELAY."""

    def __init__(self, host: str, port: int, timeout: float = 120.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.n = 0
        self.greeting = self._read_until_line()

    def _read_until_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise IMAPError("connection closed")
        self.buf += chunk

    def command(self, cmd: str | bytes, literal: bytes | None = None) -> tuple[list[bytes], bytes]:
        """Send a command (with one trailing literal if given); return (untagged, status)."""
        self.n += 1
        tag = b"B%d" % self.n
        c = cmd.encode() if isinstance(cmd, str) else cmd
        if literal is not None:
            self.sock.sendall(tag + b" " + c + b" {%d}\r\n" % len(literal))
            lines, status = self._read(tag)
            if not status.startswith(b"+"):
                raise IMAPError(status.decode(errors="replace"))
            self.sock.sendall(literal + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + c + b"\r\n")
        lines, status = self._read(tag)
        if not status.startswith(tag + b" OK"):
            raise IMAPError(f"{c!r}: {status.decode(errors='replace').strip()}")
        return lines, status

    def _read(self, tag: bytes) -> tuple[list[bytes], bytes]:
        # scan only once enough data may be there: cheap for big FETCH responses
        while True:
            if response_may_be_complete(self.buf, tag):
                r = split_response(self.buf, tag)
                if r is not None:
                    lines, status, used = r
                    self.buf = self.buf[used:]
                    return lines, status
            self._recv()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class AsyncIMAP:
    """asyncio client: thousands of these in one process (IDLE scenario, mixed load)."""

    def __init__(self):
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buf = b""
        self.n = 0

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port, limit=1 << 22)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while b"\r\n" not in self.buf:
            await self._recv()
        _, _, self.buf = self.buf.partition(b"\r\n")

    async def _recv(self) -> None:
        chunk = await self.reader.read(1 << 20)
        if not chunk:
            raise IMAPError("connection closed")
        self.buf += chunk

    async def _read(self, tag: bytes) -> tuple[list[bytes], bytes]:
        while True:
            if response_may_be_complete(self.buf, tag):
                r = split_response(self.buf, tag)
                if r is not None:
                    lines, status, used = r
                    self.buf = self.buf[used:]
                    return lines, status
            await self._recv()

    async def command(self, cmd: str, literal: bytes | None = None) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"A%d" % self.n
        if literal is not None:
            self.writer.write(tag + b" " + cmd.encode() + b" {%d}\r\n" % len(literal))
            _, status = await self._read(tag)
            if not status.startswith(b"+"):
                raise IMAPError(status.decode(errors="replace"))
            self.writer.write(literal + b"\r\n")
        else:
            self.writer.write(tag + b" " + cmd.encode() + b"\r\n")
        lines, status = await self._read(tag)
        if not status.startswith(tag + b" OK"):
            raise IMAPError(f"{cmd}: {status.decode(errors='replace').strip()}")
        return lines, status

    async def idle_start(self) -> None:
        self.n += 1
        self.idle_tag = b"A%d" % self.n
        self.writer.write(self.idle_tag + b" IDLE\r\n")
        _, status = await self._read(self.idle_tag)
        if not status.startswith(b"+"):
            raise IMAPError(f"IDLE: {status!r}")

    async def wait_untagged(self, needle: bytes, timeout: float) -> float:
        """Wait in IDLE until an untagged line containing ``needle``; returns the time seen."""
        async def scan():
            while True:
                while b"\r\n" in self.buf:
                    line, _, self.buf = self.buf.partition(b"\r\n")
                    if needle in line:
                        return time.time()
                await self._recv()
        return await asyncio.wait_for(scan(), timeout)

    async def idle_done(self) -> None:
        self.writer.write(b"DONE\r\n")
        await self._read(self.idle_tag)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
