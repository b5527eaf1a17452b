"""Pure decoding of the message stream: DATA (dot-terminated), BDAT chunks, header fix-ups.

All three work chunk by chunk on whatever the socket delivered, keep only a partial line
between calls (bounded: a long line is passed on in pieces), and produce the message with
CRLF line ends, which is how the store keeps it:

- ``DotDecoder``: finds the end of DATA, undoes dot-stuffing and turns bare LF into CRLF.
  Only ``<CRLF>.<CRLF>`` ends the data: a "." line after a bare LF does not, which is what
  protects against SMTP smuggling (CVE-2023-51766 and friends).
- ``CRLFNormalizer``: the same line-end repair for BDAT chunks (no dot handling).
- ``HeaderFixer``: watches the header block, counts its Received: fields (loop detection,
  RFC 5321 6.3) and, at its end, inserts fields that are missing (Message-ID and Date for
  submission) without holding more than one line.

The work is done with bytes.replace/find over whole chunks, not per line in Python, so a
4 KB message costs a few microseconds and a 50 MB one streams at disk speed.
"""
from __future__ import annotations

import re
from typing import Callable

PARTIAL_LINE_LIMIT = 16384


def _normalize(block: bytes) -> bytes:
    """Bare LF -> CRLF (CRLF kept as is). ``block`` never ends inside a CRLF pair."""
    n = block.count(b"\n")
    if n == 0 or n == block.count(b"\r\n"):
        return block  # the common case: no bare LF, no copy
    return block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class DotDecoder:
    """Decoder for DATA. ``feed(chunk)`` -> (decoded bytes, done, leftover after the end)."""

    def __init__(self) -> None:
        self._carry = b""
        # what preceded the unprocessed data: "\r\n" at a line start after CRLF (and at the
        # start of DATA), "x\n" after a bare LF, "xx" in the middle of a line
        self._prev = b"\r\n"
        self.done = False

    def feed(self, chunk: bytes) -> tuple[bytes, bool, bytes]:
        buf = self._carry + chunk if self._carry else chunk
        last_nl = buf.rfind(b"\n")
        if last_nl < 0:
            if len(buf) <= PARTIAL_LINE_LIMIT:
                self._carry = buf
                return b"", False, b""
            # a very long line: pass it on, keeping the last byte (it may be a CR)
            out = self._lines(buf[:-1], complete=False)
            self._carry = buf[-1:]
            return out, False, b""
        # no line starting with "." (the usual case): neither the end nor dot-stuffing here
        dots = buf[:1] == b"." or buf.find(b"\n.", 0, last_nl + 1) >= 0
        if dots:
            # the end: a "." line at the start after a CRLF, or "\r\n.\r\n" inside
            if self._prev == b"\r\n" and buf.startswith(b".\r\n"):
                dot = 0
            else:
                dot = buf.find(b"\r\n.\r\n", 0, last_nl + 1)
                if dot >= 0:
                    dot += 2
            if dot >= 0:
                out = self._lines(buf[:dot], complete=True) if dot else b""
                self.done = True
                self._carry = b""
                return out, True, buf[dot + 3:]
        if last_nl == len(buf) - 1:
            self._carry = b""
            return self._lines(buf, complete=True, dots=dots), False, b""
        self._carry = buf[last_nl + 1:]
        return self._lines(buf[: last_nl + 1], complete=True, dots=dots), False, b""

    def _lines(self, block: bytes, complete: bool, dots: bool = True) -> bytes:
        """Decode ``block``: whole lines when ``complete``, else the start of a long line.
        ``dots`` False: the caller knows no line of it starts with "."."""
        at_start = self._prev != b"xx"
        out = _normalize(block)
        if dots and b"\n." in out:
            out = out.replace(b"\n.", b"\n")
        if at_start and out[:1] == b".":
            out = out[1:]
        if complete:
            self._prev = b"\r\n" if block.endswith(b"\r\n") else b"x\n"
        else:
            self._prev = b"xx"
        return out


class CRLFNormalizer:
    """Decoder for BDAT chunks: bare LF -> CRLF across chunk boundaries."""

    def __init__(self) -> None:
        self._cr = False  # previous chunk ended with CR (kept back)

    def feed(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            self._cr = True
            chunk = chunk[:-1]
        return _normalize(chunk)

    def finish(self) -> bytes:
        if self._cr:
            self._cr = False
            return b"\r"
        return b""


_FIELD = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")


class HeaderFixer:
    """Insert header fields that are missing, at the end of the header block.

    ``need`` is {lower-case field name: factory of the complete field line (CRLF ended)}.
    With nothing needed the fixer is a pass-through. Input must be CRLF-normalised.
    """

    MAX_HEADER = 256 * 1024  # past this, stop looking (and add nothing); bounds memory

    def __init__(self, need: dict[str, Callable[[], bytes]] | None = None) -> None:
        self.need = dict(need or {})
        self.done = False
        self.received = 0  # Received: fields seen (hop count)
        self._partial = b""
        self._seen = 0
        self.present: set[str] = set()

    def _missing(self) -> bytes:
        return b"".join(make() for name, make in self.need.items() if name not in self.present)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        buf = self._partial + data if self._partial else data
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos: nl + 1]
            if line == b"\r\n" or not (line[:1] in (b" ", b"\t") or _FIELD.match(line)):
                self.done = True
                self._partial = b""
                return buf[:pos] + self._missing() + buf[pos:]
            if line[:1] not in (b" ", b"\t"):
                name = line.split(b":", 1)[0].strip().lower().decode("ascii")
                self.present.add(name)
                if name == "received":
                    self.received += 1
            pos = nl + 1
        self._seen += pos
        self._partial = buf[pos:]
        if self._seen + len(self._partial) > self.MAX_HEADER:
            self.done = True
            rest, self._partial = self._partial, b""
            return buf[:pos] + rest
        return buf[:pos]

    def finish(self) -> bytes:
        """End of message: a message that is all header gets the fields at its end."""
        if self.done:
            return b""
        self.done = True
        rest, self._partial = self._partial, b""
        if rest and not rest.endswith(b"\n"):
            rest += b"\r\n"
        return rest + self._missing()
