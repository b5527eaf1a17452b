"""POP3 wire format, sans-IO: pure functions and small state machines over bytes.

- ``LineSplitter``: client bytes -> command lines, with a length limit that never buffers
  more than the limit (an over-long line becomes one ``TOO_LONG`` item, the rest of it is
  discarded, and the next line is read normally).
- ``parse_command``: a line -> (VERB, [args]).
- ``stuff_message`` / ``DotStuffer``: RFC 1939 section 3 multi-line encoding of a message
  (CRLF line ends, a "." at the start of a line doubled, the ".CRLF" terminator), whole or in
  chunks of any size.
- ``top_chunks``: the header plus the first n body lines of a message file (TOP).
- ``decode_sasl_plain`` (RFC 4616) and ``uidl_for_key`` (RFC 1939 unique-id syntax).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import BinaryIO, Iterator

TOO_LONG = object()  # LineSplitter item for a line longer than the limit

_BARE_LF = re.compile(rb"(?<!\r)\n")


class LineSplitter:
    """Splits a byte stream into lines ending in LF (a CR before it is dropped).

    ``feed(data)`` buffers; ``next()`` returns the next line (bytes, without its end),
    ``TOO_LONG`` once for a line longer than ``limit`` octets, or None when no complete line
    is buffered. Memory stays bounded by ``limit`` plus one ``feed`` (an over-long line is
    dropped as it arrives)."""

    def __init__(self, limit: int = 255):
        self.limit = limit
        self._buf = b""
        self._discarding = False

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        """Forget everything buffered (after STLS: no plaintext may leak into TLS)."""
        self._buf = b""
        self._discarding = False

    def next(self):
        buf = self._buf
        if not buf:
            return None
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > self.limit + 1:  # cannot become a valid line any more
                self._buf = b""
                self._discarding = True
            return None
        line = buf[:i]
        self._buf = buf[i + 1:]
        if self._discarding:
            self._discarding = False
            return TOO_LONG
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.limit:
            return TOO_LONG
        return line


def parse_command(line: bytes) -> tuple[str, list[bytes]]:
    """(upper-case verb, arguments split on runs of spaces). The verb is "" for an empty
    line; a verb that is not printable ASCII comes back as "?"."""
    parts = line.split()
    if not parts:
        return "", []
    verb = parts[0]
    try:
        v = verb.decode("ascii")
    except UnicodeDecodeError:
        return "?", parts[1:]
    if not v.isprintable():
        return "?", parts[1:]
    return v.upper(), parts[1:]


def rest_after_verb(line: bytes) -> bytes:
    """Everything after the verb and one space (PASS takes a password with spaces)."""
    line = line.lstrip(b" ")
    _, sep, rest = line.partition(b" ")
    return rest if sep else b""


def stuff_message(data: bytes) -> bytes:
    """A whole message as the body of a multi-line response, terminator included."""
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    if data[:1] == b".":
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if data.endswith(b"\r\n") or not data:
        return data + b".\r\n"
    if data.endswith(b"\r"):
        return data + b"\n.\r\n"
    return data + b"\r\n.\r\n"


class DotStuffer:
    """``stuff_message`` for a message arriving in chunks split anywhere:
    ``feed(chunk)`` for each, then ``finish()`` for the end (and terminator)."""

    def __init__(self):
        self.bol = True   # the last octet sent ended a line (or nothing was sent)
        self.cr = False   # the last octet sent was a CR (a LF next completes a CRLF)
        self.sent = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self.sent = True
        head = b""
        if self.cr and chunk[:1] == b"\n":
            head, chunk = b"\n", chunk[1:]
            self.bol, self.cr = True, False
            if not chunk:
                return head
        if chunk.count(b"\n") != chunk.count(b"\r\n"):
            chunk = _BARE_LF.sub(b"\r\n", chunk)
        if self.bol and chunk[:1] == b".":
            chunk = b"." + chunk
        if b"\n." in chunk:
            chunk = chunk.replace(b"\n.", b"\n..")
        last = chunk[-1:]
        self.bol = last == b"\n"
        self.cr = last == b"\r"
        return head + chunk

    def finish(self) -> bytes:
        if self.bol:
            return b".\r\n"
        if self.cr:
            return b"\n.\r\n"
        return b"\r\n.\r\n"


def top_chunks(f: BinaryIO, lines: int, chunk_size: int = 65536) -> Iterator[bytes]:
    """The message header, the blank line and the first ``lines`` body lines of a file, in
    chunks of about ``chunk_size`` octets (a long line is read in pieces, never whole)."""
    out: list[bytes] = []
    pending = 0
    in_header = True
    body_left = lines
    at_bol = True
    while True:
        if not in_header and body_left <= 0 and at_bol:
            break
        piece = f.readline(chunk_size)
        if not piece:
            break
        out.append(piece)
        pending += len(piece)
        complete = piece.endswith(b"\n")
        if complete:
            if in_header:
                if at_bol and piece in (b"\r\n", b"\n"):
                    in_header = False
            else:
                body_left -= 1
        at_bol = complete
        if pending >= chunk_size:
            yield b"".join(out)
            out, pending = [], 0
    if out:
        yield b"".join(out)


def decode_sasl_plain(b64: bytes) -> tuple[str, str, str] | None:
    """(authzid, authcid, password) from a base64 PLAIN response; None if malformed."""
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        return None
    try:
        authz, authc, pw = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None
    if not authc or not pw:
        return None
    return authz, authc, pw


def uidl_for_key(key: str) -> str:
    """The RFC 1939 unique-id of a message key: the key itself when it is 1-70 printable
    ASCII characters (0x21-0x7E), as every key mailhub writes is; otherwise a SHA-1 of it
    (a foreign Maildir with a long host name), which is equally stable."""
    if 0 < len(key) <= 70 and key.isascii() and key.isprintable() and " " not in key:
        return key
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
