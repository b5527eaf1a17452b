"""CommandFramer: sans-IO splitting of the client byte stream into whole IMAP commands.

An IMAP command is a line, possibly continued by literals: ``{n}`` (synchronising: the
server must answer ``+`` before the client sends the n bytes) or ``{n+}`` (LITERAL+, sent at
once). ``feed(data)`` returns a list of events:

- ``("command", bytes)``: a complete command, its literals inline (``{n}\\r\\n<n bytes>``),
  without the final CRLF; the parser takes it from there.
- ``("continue", None)``: a synchronising literal was accepted; send ``+ Ready``.
- ``("toobig", first_line)``: a literal exceeded its limit. For ``{n}`` the client waits for
  ``+`` and gets the tagged refusal instead; for ``{n+}`` the n bytes are read and thrown
  away (never buffered) and the rest of that command is dropped too.
- ``("toolong", head)``: a line exceeded ``max_line``; everything up to its end is dropped.

The limit of a literal is ``literal_limit(first_line)`` (APPEND gets the APPENDLIMIT, other
commands a small one), so a huge upload is refused before a byte of it is stored.
"""
from __future__ import annotations

import re

_LITERAL_RE = re.compile(rb"\{(\d{1,20})(\+?)\}$")


class CommandFramer:
    def __init__(self, literal_limit=lambda first_line: 65536, max_line: int = 65536,
                 max_command: int = 64 * 1024 * 1024):
        self.literal_limit = literal_limit
        self.max_line = max_line
        self.max_command = max_command
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._literal = 0          # bytes of literal still expected
        self._discard = False      # current command is refused; drop its bytes
        self._skip_line = False    # inside an over-long line; drop up to its end
        self._first: bytes | None = None

    @property
    def in_literal(self) -> bool:
        return self._literal > 0

    def reset(self) -> None:
        self._buf.clear()
        self._parts = []
        self._size = 0
        self._literal = 0
        self._discard = False
        self._skip_line = False
        self._first = None

    def take_buffer(self) -> bytes:
        """Bytes received but not yet framed (handed to TLS negotiation, e.g.)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        events: list[tuple[str, object]] = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n:
            if self._literal:
                take = min(self._literal, n - pos)
                if not self._discard:
                    self._parts.append(bytes(buf[pos:pos + take]))
                self._literal -= take
                pos += take
                continue
            nl = buf.find(b"\n", pos)
            if self._skip_line:
                if nl < 0:
                    pos = n
                    break
                pos = nl + 1
                self._skip_line = False
                self._reset_command()
                continue
            if nl < 0:
                if n - pos > self.max_line:
                    events.append(("toolong", bytes(buf[pos:pos + 80])))
                    self._skip_line = True
                    pos = n
                break
            if nl - pos > self.max_line:
                events.append(("toolong", bytes(buf[pos:pos + 80])))
                pos = nl + 1
                self._reset_command()
                continue
            end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            line = bytes(buf[pos:end])
            pos = nl + 1
            if self._first is None:
                self._first = line
            m = _LITERAL_RE.search(line)
            if m is None:
                if self._discard:
                    self._reset_command()
                    continue
                self._parts.append(line)
                cmd = b"".join(self._parts)
                self._reset_command()
                events.append(("command", cmd))
                continue
            size = int(m.group(1))
            sync = not m.group(2)
            self._size += len(line) + size
            if self._discard:
                self._literal = size
                continue
            if size > self.literal_limit(self._first) or self._size > self.max_command:
                events.append(("toobig", self._first))
                if sync:
                    self._reset_command()
                else:
                    self._discard = True
                    self._literal = size
                continue
            self._parts.append(line + b"\r\n")
            self._literal = size
            if sync:
                events.append(("continue", None))
            if size == 0:
                continue
        del buf[:pos]
        return events

    def _reset_command(self) -> None:
        self._parts = []
        self._size = 0
        self._discard = False
        self._first = None
