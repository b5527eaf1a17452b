"""Pure SMTP syntax: command lines, MAIL/RCPT paths and parameters, SASL payloads, replies.

Everything here is a function of bytes/str with no I/O, so it is tested without sockets.
Errors are raised as ``SMTPError(code, enhanced, text)``, which the protocol turns into a
reply as it is. Paths follow RFC 5321 section 4.1.2 with the leniencies real clients need
(a space after the colon, a bare address without angle brackets); a source route
(``@a,@b:user@c``) is accepted and ignored, as RFC 5321 section C says, so only the final
mailbox is ever looked at by the relay policy.
"""
from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass, field


class SMTPError(Exception):
    """A reply to send instead of going on: code, enhanced status code, text."""

    def __init__(self, code: int, enhanced: str, text: str):
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


@functools.lru_cache(maxsize=256)
def _single(code: int, enhanced: str | None, text: str) -> bytes:
    body = f"{enhanced} {text}" if enhanced else text
    return f"{code} {body}\r\n".encode("utf-8", "surrogateescape")


def reply(code: int, enhanced: str | None, text: str | list[str]) -> bytes:
    """One reply, multi-line when ``text`` is a list (RFC 5321 4.2.1, RFC 2034 codes)."""
    if isinstance(text, str):
        return _single(code, enhanced, text)
    lines = text
    out = []
    for i, line in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        body = f"{enhanced} {line}" if enhanced else line
        out.append(f"{code}{sep}{body}\r\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def parse_command(line: bytes) -> tuple[str, str]:
    """(VERB, argument) of a command line given without its CRLF. The verb is upper-cased
    ASCII; the argument is decoded as UTF-8 (undecodable bytes kept as surrogates, so a
    later check can refuse them)."""
    text = line.decode("utf-8", "surrogateescape")
    verb, _, arg = text.strip(" \t").partition(" ")
    if not verb.isascii():
        return "", text
    return verb.upper(), arg.strip(" \t")


@dataclass
class Path:
    """A parsed reverse- or forward-path: ``address`` is "" for the null path <>."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)
    utf8: bool = False  # the address has non-ASCII characters

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff"
_DOT_STRING = re.compile(rf"^[{_ATEXT}]+(\.[{_ATEXT}]+)*$")
_QUOTED = re.compile(r'^"([\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"$')
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff]([A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_LITERAL = re.compile(r"^\[[\x21-\x5a\x5e-\x7e]+\]$")
_ROUTE = re.compile(rf"^@[^,:@]+(,@[^,:@]+)*:")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")
_BAD_CHAR = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")


def _split_path(s: str) -> tuple[str, str]:
    """(path text without brackets, the rest after it). Honours quoted local parts."""
    if not s.startswith("<"):
        # lenient: a bare address up to the first space (Postfix accepts it too)
        path, _, rest = s.partition(" ")
        if "<" in path or ">" in path:
            raise ValueError("unbalanced angle brackets")
        return path, rest
    i, quoted = 1, False
    while i < len(s):
        c = s[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return s[1:i], s[i + 1:]
        elif c == "<":
            raise ValueError("nested angle bracket")
        i += 1
    raise ValueError("missing closing angle bracket")


def check_mailbox(addr: str) -> None:
    """ValueError unless ``addr`` is a syntactically valid RFC 5321/6531 mailbox."""
    if _BAD_CHAR.search(addr):
        raise ValueError("control or undecodable character")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("expected local@domain")
    if not (_DOT_STRING.match(local) or _QUOTED.match(local)):
        raise ValueError("bad local part")
    if len(local.encode("utf-8")) > 64 or len(domain) > 255:
        raise ValueError("too long")
    if not (_DOMAIN.match(domain) or _LITERAL.match(domain)):
        raise ValueError("bad domain")


def parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not value):
            raise ValueError(f"bad parameter {item!r}")
        params[key.upper()] = value if eq else None
    return params


def parse_mail_rcpt(arg: str, keyword: str) -> Path:
    """Parse the argument of ``MAIL`` (keyword "FROM") or ``RCPT`` (keyword "TO")."""
    is_mail = keyword == "FROM"
    bad_addr = SMTPError(501, "5.1.7" if is_mail else "5.1.3",
                         f"Bad {'sender' if is_mail else 'recipient'} address syntax")
    head, colon, rest = arg.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise SMTPError(501, "5.5.4", f"Syntax: {'MAIL FROM:<address>' if is_mail else 'RCPT TO:<address>'}")
    rest = rest.lstrip(" ")
    try:
        path, tail = _split_path(rest)
    except ValueError:
        raise bad_addr from None
    m = _ROUTE.match(path)
    if m:
        path = path[m.end():]  # source route: accepted and ignored (RFC 5321 C)
    if path == "":
        if not is_mail:
            raise bad_addr
    elif not is_mail and path.lower() == "postmaster":
        pass  # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted
    else:
        try:
            check_mailbox(path)
        except ValueError:
            raise bad_addr from None
    try:
        params = parse_params(tail)
    except ValueError:
        raise SMTPError(501, "5.5.4", "Syntax error in parameters") from None
    return Path(address=path, params=params, utf8=not path.isascii())


def parse_bdat(arg: str) -> tuple[int, bool]:
    """(chunk size, is last) of ``BDAT <size> [LAST]``; ValueError when malformed."""
    parts = arg.split()
    if not parts or len(parts) > 2 or not parts[0].isdigit() or len(parts[0]) > 12:
        raise ValueError("syntax")
    if len(parts) == 2 and parts[1].upper() != "LAST":
        raise ValueError("syntax")
    return int(parts[0]), len(parts) == 2


def b64decode(text: str) -> bytes:
    """Strict base64 (SASL, RFC 4954); ValueError when it is not."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_plain(payload: bytes) -> tuple[str, str, str]:
    """(authzid, authcid, password) of a SASL PLAIN message (RFC 4616)."""
    parts = payload.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise ValueError("malformed PLAIN message")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise ValueError("PLAIN message is not UTF-8") from None
    return authzid, authcid, password
