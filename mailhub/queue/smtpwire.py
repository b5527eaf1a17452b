"""Sans-IO pieces of the SMTP client: reply parsing, EHLO keywords, DATA encoding.

Pure functions of bytes, tested without sockets (tests/queue/test_wire.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class ReplyError(Exception):
    """The server sent something that is not an SMTP reply."""


@dataclass
class Reply:
    code: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status at the start of the text, if the server sent one."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        return ".".join(m.groups()) if m else None

    def status(self) -> str:
        """An RFC 3463 status for a DSN: the server's own, else derived from the code."""
        e = self.enhanced
        if e and e[0] == str(self.code)[0]:
            return e
        return f"{self.code // 100}.0.0"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class ReplyParser:
    """Feed lines (without the line end); returns a Reply when one is complete."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, line: bytes) -> Reply | None:
        if len(line) < 3 or not line[:3].isdigit():
            raise ReplyError(f"malformed reply line: {line[:80]!r}")
        code = int(line[:3])
        if not 200 <= code <= 599:
            raise ReplyError(f"reply code out of range: {line[:80]!r}")
        sep = line[3:4]
        if sep not in (b"", b" ", b"-"):
            raise ReplyError(f"malformed reply line: {line[:80]!r}")
        if self._code is not None and code != self._code:
            raise ReplyError(f"reply code changed inside a multi-line reply: {line[:80]!r}")
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if sep == b"-":
            return None
        reply = Reply(code, self._lines)
        self._code, self._lines = None, []
        return reply


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters; the first line is the greeting."""
    ext: dict[str, str] = {}
    for line in reply.lines[1:]:
        kw, _, params = line.strip().partition(" ")
        if kw:
            ext[kw.upper()] = params.strip()
    # "AUTH=LOGIN PLAIN" (old syntax) counts as AUTH
    if "AUTH" not in ext:
        for kw in list(ext):
            if kw.startswith("AUTH="):
                ext["AUTH"] = kw[5:] + (" " + ext[kw] if ext[kw] else "")
    return ext


def max_size(ext: dict[str, str]) -> int | None:
    """The SIZE limit the server announced (None: no limit or none said)."""
    if "SIZE" not in ext:
        return None
    try:
        n = int(ext["SIZE"].split()[0])
    except (ValueError, IndexError):
        return None
    return n or None


def to_crlf(data: bytes) -> bytes:
    if b"\n" in data and data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    return data


def encode_data(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, ending with CRLF . CRLF."""
    data = to_crlf(data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data = (data[:-1] if data.endswith(b"\r") else data) + b"\r\n"
    return data + b".\r\n"


def is_8bit(data: bytes) -> bool:
    return not data.isascii()


def xtext_addr(addr: str) -> str:
    """An address for MAIL FROM/RCPT TO: ``<local@domain>``; ``<>`` for the null sender."""
    return f"<{addr}>"


class DataEncoder:
    """Incremental ``encode_data``: feed chunks of any size, get DATA bytes for the complete
    lines so far (dot-stuffed, CRLF); ``finish()`` gives the rest and the final dot."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self._carry + chunk
        cut = buf.rfind(b"\n") + 1
        if not cut:
            self._carry = buf
            return b""
        self._carry = buf[cut:]
        lines = to_crlf(buf[:cut])
        if lines.startswith(b"."):
            lines = b"." + lines
        return lines.replace(b"\r\n.", b"\r\n..")

    def finish(self) -> bytes:
        rest, self._carry = self._carry, b""
        if rest:
            if rest.startswith(b"."):
                rest = b"." + rest
            rest = rest.replace(b"\r\n.", b"\r\n..")
            if not rest.endswith(b"\r\n"):
                rest = (rest[:-1] if rest.endswith(b"\r") else rest) + b"\r\n"
        return rest + b".\r\n"


class MessageFile:
    """A queued message too large to hold in memory: the prefix (DKIM-Signature) plus the
    spool file, read in chunks when sent."""

    CHUNK = 64 * 1024

    def __init__(self, prefix: bytes, path) -> None:
        import os

        self.prefix = prefix
        self.path = path
        self.size = len(prefix) + os.path.getsize(path)

    def head(self, limit: int = 256 * 1024) -> bytes:
        with open(self.path, "rb") as f:
            return self.prefix + f.read(limit)

    def is_8bit(self) -> bool:
        if not self.prefix.isascii():
            return True
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(1024 * 1024)
                if not chunk:
                    return False
                if not chunk.isascii():
                    return True

    def encoded_chunks(self):
        enc = DataEncoder()
        out = enc.feed(self.prefix)
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(self.CHUNK)
                if not chunk:
                    break
                out += enc.feed(chunk)
                if len(out) >= self.CHUNK:
                    yield out
                    out = b""
        yield out + enc.finish()
