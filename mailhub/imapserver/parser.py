"""The IMAP command grammar as a pure function: ``parse_command(bytes) -> Command``.

Input is one whole command as CommandFramer delivers it (literals inline, no final CRLF).
Output is a ``Command(tag, name, uid, args)`` whose ``args`` are plain Python values: sequence
sets as ``SeqSet``, fetch items as ``FetchAtt``, search programs as nested tuples, strings as
bytes (mailbox names still in modified UTF-7 or UTF-8; the session decodes them). Anything
that does not follow RFC 3501 (+ LITERAL+, CONDSTORE, QRESYNC, LIST-EXTENDED, MOVE, UIDPLUS,
ENABLE, ID, UNSELECT, IDLE, NAMESPACE, SASL-IR) raises ``ParseError`` whose ``tag`` is known
when the tag itself was readable, so the session answers ``<tag> BAD <reason>``.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

MAX_NUMBER = 2**32 - 1
MAX_MODSEQ = 2**63 - 1

_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 32)) | {127}
ATOM_CHARS = bytes(c for c in range(33, 127) if c not in _ATOM_SPECIALS)
_ASTRING_CHARS = set(ATOM_CHARS) | {ord("]")}
_TAG_CHARS = _ASTRING_CHARS - {ord("+")}
_LIST_CHARS = _ASTRING_CHARS | {ord("%"), ord("*")}
_ATOM_SET = set(ATOM_CHARS)

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


class ParseError(ValueError):
    def __init__(self, message: str, tag: str | None = None):
        super().__init__(message)
        self.tag = tag


@dataclass
class Command:
    tag: str
    name: str                 # upper-case command name ("FETCH", "UID" is folded into uid)
    args: tuple = ()
    uid: bool = False


@dataclass(frozen=True)
class SeqSet:
    """A sequence set; ``None`` as a bound stands for ``*``."""

    ranges: tuple  # of (lo, hi) with lo/hi int or None

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Concrete (lo, hi) ranges, lo <= hi, given the value of ``*``."""
        out = []
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if a > b:
                a, b = b, a
            out.append((a, b))
        return out

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.resolve(largest))


@dataclass(frozen=True)
class Section:
    part: tuple = ()          # (1, 2) for "1.2"
    text: str = ""            # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple = ()        # header field names (bytes) for HEADER.FIELDS[.NOT]

    def label(self) -> bytes:
        parts = [".".join(str(p) for p in self.part)] if self.part else []
        if self.text:
            parts.append(self.text)
        s = ".".join(parts).encode()
        if self.fields:
            s += b" (" + b" ".join(self.fields) + b")"
        return s


@dataclass(frozen=True)
class FetchAtt:
    name: str                  # FLAGS UID INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE
                               # RFC822 RFC822.HEADER RFC822.TEXT MODSEQ BINARY BINARY.SIZE
    section: Section | None = None   # for BODY[...] / BODY.PEEK[...] / BINARY[...]
    partial: tuple | None = None     # (start, length)
    peek: bool = False


@dataclass
class _P:
    data: bytes
    i: int = 0
    tag: str | None = None

    # -- primitives ------------------------------------------------------------------------
    def err(self, msg: str):
        raise ParseError(msg, self.tag)

    def at_end(self) -> bool:
        return self.i >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.i] if self.i < len(self.data) else None

    def sp(self) -> None:
        if self.peek() != 0x20:
            self.err("expected a space")
        self.i += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.i += 1
            return True
        return False

    def expect(self, b: bytes) -> None:
        if not self.data.startswith(b, self.i):
            self.err(f"expected {b.decode()!r}")
        self.i += len(b)

    def end(self) -> None:
        if not self.at_end():
            self.err("unexpected characters at end of command")

    def _run(self, allowed: set) -> bytes:
        j = self.i
        d = self.data
        n = len(d)
        while j < n and d[j] in allowed:
            j += 1
        s = d[self.i:j]
        self.i = j
        return s

    def atom(self) -> bytes:
        s = self._run(_ATOM_SET)
        if not s:
            self.err("expected an atom")
        return s

    def word(self) -> str:
        """An atom, upper-cased, as text (keywords of the grammar)."""
        return self.atom().decode("ascii").upper()

    def number(self, nz: bool = False, limit: int = MAX_NUMBER) -> int:
        j = self.i
        d = self.data
        while j < len(d) and 48 <= d[j] <= 57:
            j += 1
        if j == self.i:
            self.err("expected a number")
        if j - self.i > 20:
            self.err("number too large")
        v = int(d[self.i:j])
        if v > limit or (nz and v == 0):
            self.err("number out of range")
        self.i = j
        return v

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        d = self.data
        while True:
            if self.i >= len(d):
                self.err("unterminated quoted string")
            c = d[self.i]
            self.i += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.i >= len(d) or d[self.i] not in (0x22, 0x5C):
                    self.err("bad escape in quoted string")
                out.append(d[self.i])
                self.i += 1
            elif c in (0x0D, 0x0A, 0):
                self.err("CR, LF or NUL in quoted string")
            else:
                out.append(c)

    def literal(self) -> bytes:
        self.expect(b"{")
        n = self.number(limit=2**63)
        if self.peek() == 0x2B:  # LITERAL+
            self.i += 1
        self.expect(b"}\r\n")
        if self.i + n > len(self.data):
            self.err("literal shorter than announced")
        s = self.data[self.i:self.i + n]
        self.i += n
        return s

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        self.err("expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self.string()
        s = self._run(_ASTRING_CHARS)
        if not s:
            self.err("expected an atom or string")
        return s

    def nstring_or_nil(self) -> bytes | None:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        a = self.atom()
        if a.upper() != b"NIL":
            self.err("expected a string or NIL")
        return None

    def list_mailbox(self) -> bytes:
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self.string()
        s = self._run(_LIST_CHARS)
        if not s:
            self.err("expected a mailbox pattern")
        return s

    def mailbox(self) -> bytes:
        return self.astring()

    def flag(self) -> str:
        if self.peek() == 0x5C:
            self.i += 1
            if self.peek() == 0x2A:
                self.i += 1
                return "\\*"
            return "\\" + self.atom().decode("ascii")
        return self.atom().decode("ascii")

    def flag_list(self) -> list[str]:
        self.expect(b"(")
        flags = []
        if self.peek() != 0x29:
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.expect(b")")
        return flags

    def seq_number(self) -> int | None:
        if self.peek() == 0x2A:
            self.i += 1
            return None
        return self.number(nz=True)

    def seq_set(self) -> SeqSet:
        ranges = []
        while True:
            lo = self.seq_number()
            hi = lo
            if self.peek() == 0x3A:
                self.i += 1
                hi = self.seq_number()
            ranges.append((lo, hi))
            if self.peek() != 0x2C:
                break
            self.i += 1
        return SeqSet(tuple(ranges))

    def paren_list(self, item) -> list:
        self.expect(b"(")
        out = []
        if self.peek() != 0x29:
            out.append(item())
            while self.maybe_sp():
                out.append(item())
        self.expect(b")")
        return out

    def date(self) -> _dt.date:
        quoted = self.peek() == 0x22
        if quoted:
            self.i += 1
        raw = self._run(set(b"0123456789-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        if quoted:
            self.expect(b'"')
        try:
            d, m, y = raw.decode().split("-")
            return _dt.date(int(y), MONTHS.index(m.upper()) + 1, int(d))
        except (ValueError, IndexError):
            self.err("invalid date")

    def date_time(self) -> _dt.datetime:
        raw = self.quoted().decode("ascii", "replace")
        try:
            dpart, tpart, zone = raw.strip().split(" ")
            d, m, y = dpart.split("-")
            hh, mm, ss = (int(x) for x in tpart.split(":"))
            if len(zone) != 5 or zone[0] not in "+-":
                raise ValueError
            off = (int(zone[1:3]) * 60 + int(zone[3:5])) * (1 if zone[0] == "+" else -1)
            return _dt.datetime(int(y), MONTHS.index(m.upper()) + 1, int(d), hh, mm, ss,
                                tzinfo=_dt.timezone(_dt.timedelta(minutes=off)))
        except (ValueError, IndexError):
            self.err("invalid date-time")


# -- command grammar ------------------------------------------------------------------------

def parse_tag(data: bytes) -> str | None:
    """The tag of a (possibly malformed) command line, or None."""
    p = _P(data)
    t = p._run(_TAG_CHARS)
    return t.decode("ascii") if t and p.peek() == 0x20 else None


def parse_command(data: bytes) -> Command:
    p = _P(data)
    tag = p._run(_TAG_CHARS)
    if not tag:
        raise ParseError("missing or invalid tag")
    p.tag = tag.decode("ascii")
    if p.at_end():
        p.err("missing command")
    p.sp()
    name = p._run(set(ATOM_CHARS))
    if not name:
        p.err("missing command")
    name = name.decode("ascii").upper()
    uid = False
    if name == "UID":
        uid = True
        p.sp()
        name = p.word()
        if name not in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE"):
            p.err(f"UID {name} is not a command")
    handler = _COMMANDS.get(name)
    if name == "EXPUNGE" and not uid:
        handler = _no_args
    if handler is None:
        p.err(f"unknown command {name}")
    args = handler(p)
    p.end()
    return Command(p.tag, name, tuple(args), uid)


def _no_args(p: _P):
    return ()


def _login(p: _P):
    p.sp()
    user = p.astring()
    p.sp()
    pw = p.astring()
    return (user, pw)


def _authenticate(p: _P):
    p.sp()
    mech = p.word()
    initial = None
    if p.maybe_sp():
        if p.peek() == 0x3D:  # "=" empty initial response
            p.i += 1
            initial = b""
        else:
            initial = p._run(set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
            if not initial:
                p.err("invalid initial response")
    return (mech, initial)


def _one_mailbox(p: _P):
    p.sp()
    return (p.mailbox(),)


def _create(p: _P):
    p.sp()
    mbox = p.mailbox()
    use = []
    if p.maybe_sp():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent))
        p.expect(b"(")
        if p.word() != "USE":
            p.err("unknown CREATE parameter")
        p.sp()
        use = p.flag_list()
        p.expect(b")")
    return (mbox, use)


def _select(p: _P):
    p.sp()
    mbox = p.mailbox()
    params = {}
    if p.maybe_sp():
        p.expect(b"(")
        while True:
            w = p.word()
            if w == "CONDSTORE":
                params["CONDSTORE"] = True
            elif w == "QRESYNC":
                p.sp()
                p.expect(b"(")
                uidvalidity = p.number(nz=True)
                p.sp()
                modseq = p.number(limit=MAX_MODSEQ)
                known = None
                seqmatch = None
                if p.maybe_sp():
                    if p.peek() != 0x28:
                        known = p.seq_set()
                        p.maybe_sp()
                    if p.peek() == 0x28:
                        p.i += 1
                        seqs = p.seq_set()
                        p.sp()
                        uids = p.seq_set()
                        p.expect(b")")
                        seqmatch = (seqs, uids)
                p.expect(b")")
                params["QRESYNC"] = (uidvalidity, modseq, known, seqmatch)
            else:
                p.err(f"unknown SELECT parameter {w}")
            if not p.maybe_sp():
                break
        p.expect(b")")
    return (mbox, params)


def _rename(p: _P):
    p.sp()
    a = p.mailbox()
    p.sp()
    b = p.mailbox()
    return (a, b)


def _list(p: _P):
    """LIST [(selection)] ref (pattern | (patterns)) [RETURN (options)]  (RFC 5258)."""
    p.sp()
    selection = []
    if p.peek() == 0x28:
        selection = [w.decode("ascii").upper() for w in p.paren_list(p.atom)]
        p.sp()
    ref = p.mailbox()
    p.sp()
    if p.peek() == 0x28:
        patterns = p.paren_list(p.list_mailbox)
        if not patterns:
            p.err("empty pattern list")
    else:
        patterns = [p.list_mailbox()]
    returns = []
    status = None
    if p.maybe_sp():
        if p.word() != "RETURN":
            p.err("expected RETURN")
        p.sp()
        p.expect(b"(")
        if p.peek() != 0x29:
            while True:
                w = p.word()
                if w == "STATUS":
                    p.sp()
                    status = [x.decode("ascii").upper() for x in p.paren_list(p.atom)]
                returns.append(w)
                if not p.maybe_sp():
                    break
        p.expect(b")")
    return (selection, ref, patterns, returns, status)


def _lsub(p: _P):
    p.sp()
    ref = p.mailbox()
    p.sp()
    return (ref, p.list_mailbox())


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "APPENDLIMIT"}


def _status(p: _P):
    p.sp()
    mbox = p.mailbox()
    p.sp()
    items = [a.decode("ascii").upper() for a in p.paren_list(p.atom)]
    for it in items:
        if it not in STATUS_ITEMS:
            p.err(f"unknown STATUS item {it}")
    if not items:
        p.err("empty STATUS item list")
    return (mbox, items)


def _append(p: _P):
    """APPEND mailbox [flags] [date-time] literal; several messages (MULTIAPPEND) allowed."""
    p.sp()
    mbox = p.mailbox()
    messages = []
    while p.maybe_sp():
        flags = []
        when = None
        if p.peek() == 0x28:
            flags = p.flag_list()
            p.sp()
        if p.peek() == 0x22:
            when = p.date_time()
            p.sp()
        if p.peek() == 0x7E:  # literal8 (RFC 3516 syntax, RFC 6855 APPEND)
            p.i += 1
        elif p.peek() in (0x55, 0x75) and p.data[p.i:p.i + 6].upper() == b"UTF8 (":
            # RFC 6855: UTF8 (~{n}) after ENABLE UTF8=ACCEPT
            p.i += 6
            if p.peek() == 0x7E:
                p.i += 1
            messages.append((flags, when, p.literal()))
            p.expect(b")")
            continue
        if p.peek() != 0x7B:
            p.err("expected the message literal")
        messages.append((flags, when, p.literal()))
    if not messages:
        p.err("APPEND needs a message")
    return (mbox, messages)


def _enable(p: _P):
    caps = []
    while p.maybe_sp():
        caps.append(p.atom().decode("ascii").upper())
    if not caps:
        p.err("ENABLE needs a capability")
    return (caps,)


def _id(p: _P):
    p.sp()
    if p.peek() == 0x28:
        items = p.paren_list(p.nstring_or_nil)
        if len(items) % 2:
            p.err("ID list needs field/value pairs")
        return (items,)
    p.atom()
    return (None,)


FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ATTS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE",
                "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ", "BODY"}


def _section(p: _P, binary: bool = False) -> Section:
    p.expect(b"[")
    part: list[int] = []
    text = ""
    fields: tuple = ()
    want_text = True
    if p.peek() is not None and 48 <= p.peek() <= 57:
        part.append(p.number(nz=True))
        while p.peek() == 0x2E and p.i + 1 < len(p.data) and 48 <= p.data[p.i + 1] <= 57:
            p.i += 1
            part.append(p.number(nz=True))
        if p.peek() == 0x2E and not binary:
            p.i += 1
        else:
            want_text = False
    if want_text and p.peek() != 0x5D:
        if binary:
            p.err("bad BINARY section")
        w = p._run(set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz."))
        text = w.decode().upper()
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            p.sp()
            names = p.paren_list(p.astring)
            if not names:
                p.err("empty header list")
            fields = tuple(names)
        elif text not in ("HEADER", "TEXT", "MIME") or (text == "MIME" and not part):
            p.err(f"bad section {text}")
    elif want_text and part:
        p.err("bad section")
    p.expect(b"]")
    return Section(tuple(part), text, fields)


def _fetch_att(p: _P) -> FetchAtt:
    w = p._run(set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")).decode().upper()
    if w in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and p.peek() == 0x5B:
        binary = w.startswith("BINARY")
        section = _section(p, binary)
        partial = None
        if p.peek() == 0x3C and w != "BINARY.SIZE":
            p.i += 1
            start = p.number()
            p.expect(b".")
            length = p.number(nz=True)
            p.expect(b">")
            partial = (start, length)
        name = "BINARY.SIZE" if w == "BINARY.SIZE" else ("BINARY" if binary else "BODY")
        return FetchAtt(name, section, partial, w.endswith(".PEEK"))
    if w in _SIMPLE_ATTS:
        return FetchAtt(w)
    p.err(f"unknown fetch item {w or p.data[p.i:p.i + 10]!r}")


def _fetch(p: _P):
    p.sp()
    seqs = p.seq_set()
    p.sp()
    if p.peek() == 0x28:
        atts = p.paren_list(lambda: _fetch_att(p))
        if not atts:
            p.err("empty fetch list")
    else:
        save = p.i
        w = p._run(set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")).decode().upper()
        if w in FETCH_MACROS and p.peek() in (None, 0x20):
            atts = [FetchAtt(n) for n in FETCH_MACROS[w]]
        else:
            p.i = save
            atts = [_fetch_att(p)]
    mods = {}
    if p.maybe_sp():
        p.expect(b"(")
        while True:
            w = p.word()
            if w == "CHANGEDSINCE":
                p.sp()
                mods["CHANGEDSINCE"] = p.number(limit=MAX_MODSEQ)
            elif w == "VANISHED":
                mods["VANISHED"] = True
            else:
                p.err(f"unknown FETCH modifier {w}")
            if not p.maybe_sp():
                break
        p.expect(b")")
    return (seqs, atts, mods)


def _store(p: _P):
    p.sp()
    seqs = p.seq_set()
    p.sp()
    unchangedsince = None
    if p.peek() == 0x28:
        p.i += 1
        if p.word() != "UNCHANGEDSINCE":
            p.err("unknown STORE modifier")
        p.sp()
        unchangedsince = p.number(limit=MAX_MODSEQ)
        p.expect(b")")
        p.sp()
    w = p._run(set(b"+-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")).decode().upper()
    mode = "="
    if w[:1] in ("+", "-"):
        mode, w = w[0], w[1:]
    if w not in ("FLAGS", "FLAGS.SILENT"):
        p.err("expected FLAGS, +FLAGS or -FLAGS")
    silent = w.endswith(".SILENT")
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        flags = [p.flag()]
        while p.maybe_sp():
            flags.append(p.flag())
    if "\\*" in flags:
        p.err("\\* is not a flag")
    return (seqs, mode, silent, flags, unchangedsince)


def _copy(p: _P):
    p.sp()
    seqs = p.seq_set()
    p.sp()
    return (seqs, p.mailbox())


def _uid_expunge(p: _P):
    p.sp()
    return (p.seq_set(),)


_FLAG_KEYS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
              "FLAGGED": "\\Flagged", "SEEN": "\\Seen", "RECENT": "\\Recent"}
_STR_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


def _search_key(p: _P, depth: int = 0):
    if depth > 50:
        p.err("search program nested too deeply")
    c = p.peek()
    if c == 0x28:
        p.i += 1
        keys = [_search_key(p, depth + 1)]
        while p.maybe_sp():
            keys.append(_search_key(p, depth + 1))
        p.expect(b")")
        return ("AND", tuple(keys))
    if c is not None and (48 <= c <= 57 or c == 0x2A):
        return ("SEQ", p.seq_set())
    w = p.word()
    if w == "ALL":
        return ("ALL",)
    if w in _FLAG_KEYS:
        return ("FLAG", _FLAG_KEYS[w])
    if w.startswith("UN") and w[2:] in _FLAG_KEYS and w != "UNRECENT":
        return ("NOT", ("FLAG", _FLAG_KEYS[w[2:]]))
    if w == "NEW":
        return ("AND", (("FLAG", "\\Recent"), ("NOT", ("FLAG", "\\Seen"))))
    if w == "OLD":
        return ("NOT", ("FLAG", "\\Recent"))
    if w in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        k = ("FLAG", p.atom().decode("ascii"))
        return k if w == "KEYWORD" else ("NOT", k)
    if w in _STR_KEYS:
        p.sp()
        return (w, p.astring())
    if w == "HEADER":
        p.sp()
        name = p.astring()
        p.sp()
        return ("HEADER", name, p.astring())
    if w in _DATE_KEYS:
        p.sp()
        return (w, p.date())
    if w in ("LARGER", "SMALLER"):
        p.sp()
        return (w, p.number())
    if w == "NOT":
        p.sp()
        return ("NOT", _search_key(p, depth + 1))
    if w == "OR":
        p.sp()
        a = _search_key(p, depth + 1)
        p.sp()
        return ("OR", a, _search_key(p, depth + 1))
    if w == "UID":
        p.sp()
        return ("UID", p.seq_set())
    if w == "MODSEQ":
        p.sp()
        if p.peek() == 0x22:  # entry-name entry-type-req
            p.quoted()
            p.sp()
            p.atom()
            p.sp()
        return ("MODSEQ", p.number(limit=MAX_MODSEQ))
    p.err(f"unknown search key {w}")


def _search(p: _P):
    p.sp()
    charset = None
    returns = None
    save = p.i
    if p.peek() not in (0x28, 0x2A) and not (48 <= (p.peek() or 0) <= 57):
        w = p.word()
        if w == "RETURN":
            p.sp()
            returns = [x.decode("ascii").upper() for x in p.paren_list(p.atom)]
            p.sp()
            save = p.i
            w = p.word() if p.peek() not in (0x28, 0x2A) and not (48 <= (p.peek() or 0) <= 57) else ""
        if w == "CHARSET":
            p.sp()
            charset = p.astring().decode("ascii", "replace").upper()
            p.sp()
        else:
            p.i = save
    keys = [_search_key(p)]
    while p.maybe_sp():
        keys.append(_search_key(p))
    return (charset, ("AND", tuple(keys)), returns)


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "CHECK": _no_args, "CLOSE": _no_args, "EXPUNGE": _uid_expunge, "UNSELECT": _no_args,
    "IDLE": _no_args, "NAMESPACE": _no_args,
    "LOGIN": _login, "AUTHENTICATE": _authenticate,
    "SELECT": _select, "EXAMINE": _select,
    "CREATE": _create, "DELETE": _one_mailbox, "SUBSCRIBE": _one_mailbox,
    "UNSUBSCRIBE": _one_mailbox, "RENAME": _rename,
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "ENABLE": _enable, "ID": _id,
    "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy, "SEARCH": _search,
}


def command_name(line: bytes) -> str:
    """Upper-case command name of a first line ("UID FETCH" -> "FETCH"), "" if unreadable."""
    parts = line.split(b" ", 3)
    if len(parts) < 2:
        return ""
    name = parts[1].upper()
    if name == b"UID" and len(parts) > 2:
        name = parts[2].upper()
    return name.decode("ascii", "replace")
