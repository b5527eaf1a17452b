"""SEARCH evaluation over a folder index: flags, UIDs, sizes and dates from memory; headers and
bodies read from the message file only when the program needs them (and only once).

FROM/TO/CC/BCC/SUBJECT and HEADER on a cached field are first evaluated for the whole folder
(``precompute``) on the persisted columns of decoded values (store.cache.SearchColumns)."""
from __future__ import annotations

import datetime as _dt
import re

from mailhub.imapserver import message as M
from mailhub.imapserver.mailbox import read_header
from mailhub.store.cache import FIELDS as CACHED_FIELDS
from mailhub.store.cache import extract_fields

_FIELD_RX: dict = {}
_UNFOLD = re.compile(rb"\r?\n")
FEW = 200  # rows computed from their files rather than by loading the header cache
HEADER_KEYS = {"FROM": b"from", "TO": b"to", "CC": b"cc", "BCC": b"bcc", "SUBJECT": b"subject"}


def needs(program) -> set:
    """What a program reads: {"header", "body", "date"} subset."""
    out = set()

    def walk(k):
        op = k[0]
        if op in ("AND",):
            for x in k[1]:
                walk(x)
        elif op == "OR":
            walk(k[1])
            walk(k[2])
        elif op == "NOT":
            walk(k[1])
        elif op in HEADER_KEYS or op == "HEADER" or op.startswith("SENT"):
            out.add("header")
        elif op in ("BODY", "TEXT"):
            out.add("body")
        elif op in ("BEFORE", "ON", "SINCE"):
            out.add("date")
    walk(program)
    return out


class MessageContext:
    """What SEARCH may ask about one message, loaded lazily."""

    __slots__ = ("index", "pos", "seq", "uid", "letters", "recent", "_headers", "_data",
                 "_read_header", "_env", "_read_env")

    def __init__(self, index, pos, seq, uid, recent, read_header, read_all, read_env=None):
        self.index = index
        self.pos = pos
        self.seq = seq
        self.uid = uid
        self.letters = index.flags[pos]
        self.recent = recent
        self._headers = None
        self._data = None
        self._env = None
        self._read_header = (read_header, read_all)
        self._read_env = read_env

    def env_values(self, name: bytes) -> list[bytes]:
        """Unfolded values of one cached field, straight from the raw cache blob."""
        if self._read_env is None:
            return [v for n, v, _ in self.headers() if n == name]
        if self._env is None:
            self._env = self._read_env(self.pos) or b""
        rx = _FIELD_RX.get(name)
        if rx is None:
            rx = _FIELD_RX[name] = re.compile(
                rb"^" + re.escape(name) + rb"[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)", re.I | re.M)
        return [_UNFOLD.sub(b"", m.group(1)).strip() for m in rx.finditer(self._env)]

    def env(self):
        """Headers among the cached fields (From, To, Subject, Date...)."""
        if self._read_env is None:
            return self.headers()
        if self._env is None:
            self._env = self._read_env(self.pos) or b""
        return M.parse_headers(self._env)

    def headers(self):
        if self._headers is None:
            raw = self._read_header[0](self.pos)
            self._headers = M.parse_headers(raw or b"")
        return self._headers

    def data(self) -> bytes:
        if self._data is None:
            self._data = self._read_header[1](self.pos) or b""
        return self._data


def _contains(hay: str, needle: str) -> bool:
    return needle in hay


def matches(key, ctx: MessageContext, largest_seq: int, largest_uid: int) -> bool:
    op = key[0]
    if op == "AND":
        return all(matches(k, ctx, largest_seq, largest_uid) for k in key[1])
    if op == "UIDS":
        return ctx.uid in key[1]
    if op == "ALL":
        return True
    if op == "FLAG":
        name = key[1]
        low = name.lower()
        if low == "\\recent":
            return ctx.recent
        letter = M_FLAG.get(low)
        if letter is None:
            letter = ctx.index.keyword_letter(name, create=False)
            if letter is None:
                return False
        return letter in ctx.letters
    if op == "NOT":
        return not matches(key[1], ctx, largest_seq, largest_uid)
    if op == "OR":
        return matches(key[1], ctx, largest_seq, largest_uid) or matches(key[2], ctx, largest_seq, largest_uid)
    if op == "SEQ":
        return key[1].contains(ctx.seq, largest_seq)
    if op == "UID":
        return key[1].contains(ctx.uid, largest_uid)
    if op == "LARGER":
        return ctx.index.size(ctx.pos) > key[1]
    if op == "SMALLER":
        return ctx.index.size(ctx.pos) < key[1]
    if op == "MODSEQ":
        return ctx.index.modseqs[ctx.pos] >= key[1]
    if op in HEADER_KEYS:
        needle = key[1].decode("utf-8", "replace").casefold()
        name = HEADER_KEYS[op]
        return any(needle in M.decoded_header(v) for v in ctx.env_values(name))
    if op == "HEADER":
        name = key[1].lower()
        needle = key[2].decode("utf-8", "replace").casefold()
        if name in CACHED_FIELDS:
            vals = ctx.env_values(name)
        else:
            vals = [v for n, v, _ in ctx.headers() if n == name]
        if not needle:
            return bool(vals)
        return any(_contains(M.decoded_header(v), needle) for v in vals)
    if op in ("BODY", "TEXT"):
        needle = key[1].decode("utf-8", "replace").casefold()
        data = ctx.data()
        hend, bstart = M.split_message(data)
        if op == "TEXT" and needle in M.decoded_header(data[:hend]):
            return True
        return needle in data[bstart:].decode("utf-8", "replace").casefold()
    if op in ("BEFORE", "ON", "SINCE"):
        d = _dt.datetime.fromtimestamp(ctx.index.internaldate(ctx.pos)).date()
        return _cmp(op, d, key[1])
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        dates = ctx.env_values(b"date")
        dt = M.header_date([(b"date", dates[0], b"")]) if dates else None
        if dt is None:
            return False
        return _cmp(op[4:], dt.date(), key[1])
    raise ValueError(f"unknown search key {op}")


def _cmp(op: str, d: _dt.date, ref: _dt.date) -> bool:
    if op == "BEFORE":
        return d < ref
    if op == "ON":
        return d == ref
    return d >= ref


M_FLAG = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T", "\\draft": "D",
          "$forwarded": "P"}


# -- whole-folder evaluation of header keys ----------------------------------------------------

def _field_rx(name: bytes):
    rx = _FIELD_RX.get(name)
    if rx is None:
        rx = _FIELD_RX[name] = re.compile(
            rb"^" + re.escape(name) + rb"[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)", re.I | re.M)
    return rx


def field_values(index, pos: int, name: bytes, read_env) -> str:
    """Decoded, case-folded values of one cached field of one message, joined by newlines."""
    raw = read_env(pos) or b""
    return "\n".join(M.decoded_header(_UNFOLD.sub(b"", m.group(1)).strip())
                      for m in _field_rx(name).finditer(raw))


def column_values(index, name: bytes, positions, read_env) -> list[str]:
    """``field_values`` of many messages, NULs made newlines (NUL separates the column's
    rows). In bulk: one regex scan over all the (newline-terminated) blocks joined, one
    decode and one casefold; blocks with an encoded word or a NUL go through field_values."""
    positions = list(positions)
    if not positions:
        return []
    if len(positions) <= FEW and not index.cache.loaded:
        # a few new messages after a restart: their files beat loading the whole cache
        blobs = [extract_fields(read_header(index, p) or b"") for p in positions]
    else:
        keys = index.keys
        get = index.cache.get  # read_env per message costs more than the lookup itself
        blobs = [get(keys[p]) or read_env(p) or b"" for p in positions]
    joined = b"\n\x00\n".join(blobs)
    odd = set()
    if joined.count(b"\x00") != len(blobs) - 1:
        odd = {i for i, b in enumerate(blobs) if b"\x00" in b}
        joined = b"\n\x00\n".join(b"" if i in odd else b for i, b in enumerate(blobs))
    rows: list = [b""] * len(positions)
    seen = bytearray(len(positions))
    row = last = 0
    count = joined.count
    unfold = _UNFOLD.sub
    for m in _field_rx(name).finditer(joined):
        start = m.start()
        row += count(b"\x00", last, start)
        last = start
        v = m.group(1)
        v = (v[:-2] if v.endswith(b"\r\n") and v.count(b"\n") == 1 else unfold(b"", v)).strip()
        if seen[row]:
            rows[row] += b"\n" + v
        else:
            seen[row] = 1
            rows[row] = v
    joined = b"\x00".join(rows)
    vals = joined.decode("utf-8", "replace").casefold().split("\x00")
    if b"=?" in joined:
        odd.update(i for i, r in enumerate(rows) if b"=?" in r)
    for i in odd:
        vals[i] = field_values(index, i, name, blobs.__getitem__).replace("\x00", "\n")
    return vals


def column_hits(index, name: bytes, needle: str, read_env) -> list[int]:
    """Positions whose field contains needle (case-folded, without NUL or newline): one
    ``str.find`` loop over the folder's column of decoded values (store.cache.SearchColumns,
    persisted, so this is also the cost of the first SEARCH after a restart)."""
    return index.search.hits(
        index, name, needle, lambda field, positions: column_values(index, field, positions, read_env))


def precompute(program, index, read_env):
    """Replace FROM/TO/CC/BCC/SUBJECT and HEADER on cached fields by UID sets (UIDs, not
    positions: the evaluation may be spread over several reactor turns)."""
    op = program[0]
    if op == "AND":
        return ("AND", tuple(precompute(k, index, read_env) for k in program[1]))
    if op == "OR":
        return ("OR", precompute(program[1], index, read_env), precompute(program[2], index, read_env))
    if op == "NOT":
        return ("NOT", precompute(program[1], index, read_env))
    if op in HEADER_KEYS:
        name, needle = HEADER_KEYS[op], program[1]
    elif op == "HEADER" and program[1].lower() in CACHED_FIELDS:
        name, needle = program[1].lower(), program[2]
    else:
        return program
    needle = needle.decode("utf-8", "replace").casefold()
    if not needle or "\x00" in needle or "\n" in needle:
        # per message: "" matches the messages that have the field (even empty), which a
        # column cannot tell from a missing one; NUL and newline separate the column's values
        return program
    uids = index.uids
    return ("UIDS", frozenset([uids[p] for p in column_hits(index, name, needle, read_env)]))
