"""SEARCH evaluation over a folder index: flags, UIDs, sizes and dates from memory; headers and
bodies read from the message file only when the program needs them (and only once)."""
from __future__ import annotations

import bisect
import datetime as _dt
import re

from mailhub.imapserver import message as M
from mailhub.store.cache import FIELDS as CACHED_FIELDS

_FIELD_RX: dict = {}
_UNFOLD = re.compile(rb"\r?\n")
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

def field_values(index, pos: int, name: bytes, read_env) -> str:
    """Decoded, case-folded values of one cached field of one message, joined by newlines."""
    raw = read_env(pos) or b""
    rx = _FIELD_RX.get(name)
    if rx is None:
        rx = _FIELD_RX[name] = re.compile(
            rb"^" + re.escape(name) + rb"[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)", re.I | re.M)
    return "\n".join(M.decoded_header(_UNFOLD.sub(b"", m.group(1)).strip())
                     for m in rx.finditer(raw))


def column(index, name: bytes, read_env) -> list[str]:
    """The field's text for every position, kept per index (message files never change, so
    an entry is valid as long as its key exists)."""
    cols = index.__dict__.setdefault("search_columns", {})
    col = cols.setdefault(name, {})
    out = []
    keys = index.keys
    for p in range(len(keys)):
        v = col.get(keys[p])
        if v is None:
            v = col[keys[p]] = field_values(index, p, name, read_env)
        out.append(v)
    if len(col) > 2 * len(keys) + 100:
        live = set(keys)
        for k in [k for k in col if k not in live]:
            del col[k]
    return out


def _raw_candidates(index, needle: bytes, read_env) -> set[int]:
    """Positions whose cached header block contains needle (case-insensitive) or an encoded
    word: one scan over all the blocks joined, in C."""
    cached = getattr(index, "search_joined", None)
    if cached is not None and cached[0] is index.uids:
        joined, starts = cached[1], cached[2]  # nothing came or went since: reuse
    else:
        keys = index.keys
        get = index.cache.get
        blobs = []
        for p in range(len(keys)):
            b = get(keys[p])
            if b is None:
                b = read_env(p) or b""
            blobs.append(b)
        joined = b"\x00".join(blobs).lower()
        starts = []
        acc = 0
        for b in blobs:
            starts.append(acc)
            acc += len(b) + 1
        index.search_joined = (index.uids, joined, starts)
    out = set()
    for pat in (needle, b"=?"):
        i = joined.find(pat)
        while i >= 0:
            p = bisect.bisect_right(starts, i) - 1
            out.add(p)
            nxt = starts[p + 1] if p + 1 < len(starts) else len(joined)
            i = joined.find(pat, nxt)
    return out


def column_hits(index, name: bytes, needle: str, read_env) -> set[int]:
    """Positions whose field contains needle. ASCII needles: candidates from one raw scan,
    each confirmed on the decoded field; others: one scan over the decoded column."""
    if needle and needle.isascii():
        cands = _raw_candidates(index, needle.encode("ascii"), read_env)
        return {p for p in cands if needle in field_values(index, p, name, read_env)}
    col = column(index, name, read_env)
    if not needle:
        return {p for p, v in enumerate(col) if v}
    sep = "\x00"
    joined = sep.join(col)
    hits = set()
    starts = None
    i = joined.find(needle)
    while i >= 0:
        if starts is None:
            starts = []
            acc = 0
            for v in col:
                starts.append(acc)
                acc += len(v) + 1
        hits.add(bisect.bisect_right(starts, i) - 1)
        i = joined.find(needle, i + 1)
    return hits


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
        needle = program[1].decode("utf-8", "replace").casefold()
        hits = column_hits(index, HEADER_KEYS[op], needle, read_env)
        return ("UIDS", frozenset(index.uids[p] for p in hits))
    if op == "HEADER" and program[1].lower() in CACHED_FIELDS:
        needle = program[2].decode("utf-8", "replace").casefold()
        hits = column_hits(index, program[1].lower(), needle, read_env)
        return ("UIDS", frozenset(index.uids[p] for p in hits))
    return program
