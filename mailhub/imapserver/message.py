"""Pure functions over message bytes: header parsing, MIME tree with exact byte ranges,
BODY[section] extraction, ENVELOPE and BODYSTRUCTURE, all producing IMAP wire bytes.

The MIME parser keeps offsets into the original bytes (Python's ``email`` package rewrites
the message, so it cannot answer ``BODY[1.2]`` byte-exactly). Malformed input never raises:
a missing boundary makes a multipart with what was found, a missing header/body separator
makes a message that is all header.
"""
from __future__ import annotations

import email.utils
import re
from email.header import decode_header

from mailhub.imapserver.response import nstring, quote_string

_HDR_END = re.compile(rb"\r?\n\r?\n")


def split_message(data: bytes) -> tuple[int, int]:
    """(end of header including the blank line, start of body)."""
    if data.startswith(b"\r\n"):
        return 2, 2
    if data.startswith(b"\n"):
        return 1, 1
    m = _HDR_END.search(data)
    if m is None:
        return len(data), len(data)
    return m.end(), m.end()


def parse_headers(header: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """[(lower-case name, unfolded value, raw field bytes incl. line end)]."""
    out = []
    cur_name = None
    cur_raw = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and cur_name is not None:
            cur_raw.append(line)
            continue
        if cur_name is not None:
            out.append(_field(cur_name, cur_raw))
        name, sep, _ = line.partition(b":")
        if sep and name and b" " not in name.strip():
            cur_name = name.strip().lower()
            cur_raw = [line]
        else:
            cur_name = None
    if cur_name is not None:
        out.append(_field(cur_name, cur_raw))
    return out


def _field(name: bytes, raw: list[bytes]) -> tuple[bytes, bytes, bytes]:
    whole = b"".join(raw)
    value = whole.partition(b":")[2].replace(b"\r", b"").replace(b"\n", b"").strip()
    return name, value, whole


def header_get(headers, name: bytes) -> bytes | None:
    for n, v, _ in headers:
        if n == name:
            return v
    return None


def header_fields(header: bytes, names, negate: bool = False) -> bytes:
    """BODY[HEADER.FIELDS (...)] / HEADER.FIELDS.NOT: the matching raw lines + CRLF."""
    wanted = {n.lower() for n in names}
    out = [raw for n, _v, raw in parse_headers(header) if (n in wanted) != negate]
    data = b"".join(out)
    if data and not data.endswith(b"\n"):
        data += b"\r\n"
    return data + b"\r\n"


def _params(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split 'main; a=b; c="d"' into (main, [(A, b)])."""
    parts = []
    cur = bytearray()
    inq = False
    esc = False
    for c in value:
        if esc:
            cur.append(c)
            esc = False
        elif c == 0x5C and inq:
            esc = True
            cur.append(c)
        elif c == 0x22:
            inq = not inq
            cur.append(c)
        elif c == 0x3B and not inq:
            parts.append(bytes(cur))
            cur = bytearray()
        else:
            cur.append(c)
    parts.append(bytes(cur))
    main = parts[0].strip()
    params = []
    for p in parts[1:]:
        k, sep, v = p.partition(b"=")
        if not sep or not k.strip():
            continue
        v = v.strip()
        if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
            v = re.sub(rb"\\(.)", rb"\1", v[1:-1])
        params.append((k.strip(), v))
    return main, params


class Part:
    """One MIME entity: header/body byte ranges in ``data``; children; encapsulated message."""

    __slots__ = ("data", "hstart", "bstart", "end", "headers", "mtype", "subtype", "params",
                 "children", "message")

    def __init__(self, data: bytes, start: int, end: int, default_type=(b"text", b"plain"), depth=0):
        self.data = data
        self.hstart = start
        hend, bstart = split_message(data[start:end])
        self.bstart = start + bstart
        self.end = end
        self.headers = parse_headers(data[start:start + hend])
        ct = header_get(self.headers, b"content-type")
        mtype, subtype = default_type
        params: list = []
        if ct:
            main, params = _params(ct)
            t, sep, s = main.partition(b"/")
            if sep and t.strip() and s.strip():
                mtype, subtype = t.strip().lower(), s.strip().lower()
            else:
                params = []
        self.mtype, self.subtype, self.params = mtype, subtype, params
        self.children: list[Part] = []
        self.message: Part | None = None
        if depth > 20:
            return
        if mtype == b"multipart":
            boundary = self.param(b"boundary")
            if boundary:
                child_default = (b"message", b"rfc822") if subtype == b"digest" else (b"text", b"plain")
                for s, e in _split_multipart(data, self.bstart, end, boundary):
                    self.children.append(Part(data, s, e, child_default, depth + 1))
        elif mtype == b"message" and subtype in (b"rfc822", b"global"):
            self.message = Part(data, self.bstart, end, depth=depth + 1)

    def param(self, name: bytes) -> bytes | None:
        for k, v in self.params:
            if k.lower() == name:
                return v
        return None

    @property
    def header_bytes(self) -> bytes:
        return self.data[self.hstart:self.bstart]

    @property
    def body_bytes(self) -> bytes:
        return self.data[self.bstart:self.end]

    def subpart(self, n: int) -> "Part | None":
        """Part n (1-based) for section numbering."""
        if self.mtype == b"multipart":
            return self.children[n - 1] if 0 < n <= len(self.children) else None
        if self.message is not None:
            return self.message.subpart(n)
        return self if n == 1 else None


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes):
    delim = b"--" + boundary
    pat = re.compile(rb"(^|\r?\n)" + re.escape(delim) + rb"(--)?[ \t]*(\r?\n|$)", re.M)
    pos = start
    cur = None
    parts = []
    for m in pat.finditer(data, start, end):
        if m.start() < pos and cur is not None:
            continue
        if cur is not None:
            parts.append((cur, m.start()))
        if m.group(2):
            cur = None
            break
        cur = m.end()
        pos = m.end()
    else:
        if cur is not None:
            parts.append((cur, end))
    return parts


def parse_message(data: bytes) -> Part:
    return Part(data, 0, len(data))


def section_bytes(msg: Part, section) -> bytes | None:
    """The bytes of BODY[section]; None when the part does not exist."""
    part = msg
    for n in section.part:
        part = part.subpart(n)
        if part is None:
            return None
    text = section.text
    if not section.part:
        target = msg
    else:
        target = part
    if text == "":
        if not section.part:
            return msg.data[msg.hstart:msg.end]
        return part.body_bytes
    if text == "MIME":
        return part.header_bytes
    # HEADER / TEXT / HEADER.FIELDS apply to a message: the top one or an rfc822 part
    if section.part:
        if target.message is None:
            return None
        target = target.message
    if text == "HEADER":
        return target.header_bytes
    if text == "TEXT":
        return target.body_bytes
    if text == "HEADER.FIELDS":
        return header_fields(target.header_bytes, [f.lower() for f in section.fields])
    if text == "HEADER.FIELDS.NOT":
        return header_fields(target.header_bytes, [f.lower() for f in section.fields], negate=True)
    return None


# -- ENVELOPE ------------------------------------------------------------------------------

_SIMPLE_ADDR = re.compile(r"\s*(?:([^<>@,]*?)\s*<([^<>\s]+)>|([^<>\s,]+))\s*\Z")


def _fast_pairs(text: str):
    """(name, addr) pairs for the common simple forms; None when getaddresses is needed."""
    if any(c in text for c in '"():;\\[]'):
        return None
    pairs = []
    for item in text.split(","):
        if not item.strip():
            continue
        m = _SIMPLE_ADDR.match(item)
        if m is None:
            return None
        if m.group(2) is not None:
            pairs.append((m.group(1) or "", m.group(2)))
        else:
            pairs.append(("", m.group(3)))
    return pairs


def _addr_list(value: bytes | None) -> bytes:
    if not value:
        return b"NIL"
    text = value.decode("utf-8", "surrogateescape")
    out = []
    pairs = _fast_pairs(text)
    if pairs is None:
        pairs = email.utils.getaddresses([text])
    for name, addr in pairs:
        if not addr and not name:
            continue
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        out.append(b"(" + nstring(_enc(name) if name else None) + b" NIL " +
                   nstring(_enc(local)) + b" " + nstring(_enc(domain) if domain else None) + b")")
    if not out:
        return b"NIL"
    return b"(" + b"".join(out) + b")"


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def envelope(headers) -> bytes:
    def h(name):
        return header_get(headers, name)

    frm = _addr_list(h(b"from"))
    sender = _addr_list(h(b"sender")) if h(b"sender") else frm
    reply = _addr_list(h(b"reply-to")) if h(b"reply-to") else frm
    return b"(" + b" ".join([
        nstring(h(b"date")), nstring(h(b"subject")), frm, sender, reply,
        _addr_list(h(b"to")), _addr_list(h(b"cc")), _addr_list(h(b"bcc")),
        nstring(h(b"in-reply-to")), nstring(h(b"message-id")),
    ]) + b")"


# -- BODYSTRUCTURE -------------------------------------------------------------------------

def _param_list(params) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(quote_string(k.upper()) + b" " + quote_string(v) for k, v in params) + b")"


def _disposition(part: Part) -> bytes:
    d = header_get(part.headers, b"content-disposition")
    if not d:
        return b"NIL"
    main, params = _params(d)
    if not main:
        return b"NIL"
    return b"(" + quote_string(main.upper()) + b" " + _param_list(params) + b")"


def _language(part: Part) -> bytes:
    v = header_get(part.headers, b"content-language")
    if not v:
        return b"NIL"
    langs = [x.strip() for x in v.split(b",") if x.strip()]
    if len(langs) == 1:
        return quote_string(langs[0])
    return b"(" + b" ".join(quote_string(x) for x in langs) + b")"


def bodystructure(part: Part, extended: bool = True) -> bytes:
    if part.mtype == b"multipart":
        if not part.children:
            # a multipart without parts: describe it as an empty text/plain part
            kids = b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 0 0)'
        else:
            kids = b"".join(bodystructure(c, extended) for c in part.children)
        out = b"(" + kids + b" " + quote_string(part.subtype.upper())
        if extended:
            out += (b" " + _param_list(part.params) + b" " + _disposition(part) + b" " +
                    _language(part) + b" " + nstring(header_get(part.headers, b"content-location")))
        return out + b")"
    body = part.body_bytes
    fields = [
        quote_string(part.mtype.upper()), quote_string(part.subtype.upper()),
        _param_list(part.params if part.params or part.mtype != b"text"
                    else [(b"CHARSET", b"us-ascii")]),
        nstring(header_get(part.headers, b"content-id")),
        nstring(header_get(part.headers, b"content-description")),
        quote_string((header_get(part.headers, b"content-transfer-encoding") or b"7BIT").upper()),
        str(len(body)).encode(),
    ]
    if part.message is not None:
        fields.append(envelope(part.message.headers))
        fields.append(bodystructure(part.message, extended))
        fields.append(str(body.count(b"\n")).encode())
    elif part.mtype == b"text":
        fields.append(str(body.count(b"\n")).encode())
    if extended:
        fields += [nstring(header_get(part.headers, b"content-md5")), _disposition(part),
                   _language(part), nstring(header_get(part.headers, b"content-location"))]
    return b"(" + b" ".join(fields) + b")"


# -- SEARCH helpers ------------------------------------------------------------------------

def decoded_header(value: bytes) -> str:
    """RFC 2047-decoded header text, case-folded, for SEARCH."""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text.casefold()
    try:
        parts = decode_header(text)
        out = []
        for chunk, cs in parts:
            if isinstance(chunk, bytes):
                try:
                    out.append(chunk.decode(cs or "utf-8", "replace"))
                except LookupError:
                    out.append(chunk.decode("utf-8", "replace"))
            else:
                out.append(chunk)
        text = "".join(out)
    except Exception:
        pass
    return text.casefold()


def header_date(headers):
    v = header_get(headers, b"date")
    if not v:
        return None
    try:
        return email.utils.parsedate_to_datetime(v.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        return None
