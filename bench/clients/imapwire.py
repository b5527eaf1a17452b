"""A minimal IMAP client that reads responses exactly (literals included) and parses nothing
else: the cost of the client stays the same, and small, for both servers.

``read_response(read_line, read_exact, tag)`` is sans-IO over two callables, so the sync
(socket) and asyncio clients share it and tests feed it bytes.
"""
from __future__ import annotations

import asyncio
import re
import socket
import time

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class IMAPError(Exception):
    pass


def split_response(data: bytes, tag: bytes) -> tuple[list[bytes], bytes, int] | None:
    """Given buffered bytes, find the complete response to ``tag``.

    Returns (untagged lines with literals inlined, tagged status line, bytes consumed) or
    None if more data is needed. Continuation requests (``+ ...``) end a response too (the
    status line is then the ``+`` line).
    """
    pos = 0
    lines: list[bytes] = []
    cur = b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = data[pos:eol + 2]
        pos = eol + 2
        m = _LITERAL.search(line)
        if m:
            n = int(m.group(1))
            if len(data) - pos < n:
                return None
            cur += line + data[pos:pos + n]
            pos += n
            continue
        cur += line
        if cur.startswith(tag + b" "):
            return lines, cur, pos
        if cur.startswith(b"+") and not lines and tag != b"*":
            return lines, cur, pos
        if cur.startswith(b"+"):
            return lines, cur, pos
        lines.append(cur)
        cur = b""


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
            if self.buf.endswith(b"\r\n"):
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
            if self.buf.endswith(b"\r\n"):
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
