"""HeaderCache: per-folder cache of the header fields ENVELOPE and SEARCH need, so a SEARCH FROM
over 50,000 messages reads one file instead of 50,000.

Kept in ``mailhub-cache`` in the folder: a ``mailhub-cache 2`` magic, then records
``<key> 0x01 <raw header lines> 0x00`` appended as messages are first read (loading is one
split, no per-record parsing in Python); a torn last record is ignored; a block holding a NUL
or 0x01 byte is simply not cached; the file is rewritten
(tmp + rename) without the records of expunged messages when it grows to twice the live
size. It is only a cache: delete it and it rebuilds itself from the message files. Message
files never change content in Maildir (only names), so an entry never goes stale.
"""
from __future__ import annotations

import marshal
import mmap
import os
import re
from pathlib import Path

CACHE_FILE = "mailhub-cache"
SEARCH_FILE = "mailhub-search"
SEARCH_VERSION = 1
MAGIC = b"mailhub-cache 2\x00"
FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
          b"in-reply-to", b"message-id")
_FIELD_RE = re.compile(rb"^(?:" + b"|".join(re.escape(f) for f in FIELDS) +
                       rb")[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*", re.I | re.M)


def extract_fields(header: bytes) -> bytes:
    """The raw lines (with continuations) of the cached fields from a header block."""
    if not header.endswith(b"\n"):
        header += b"\r\n"
    return b"".join(m.group(0) for m in _FIELD_RE.finditer(header))


class HeaderCache:
    def __init__(self, folder_path: str | Path):
        self.path = Path(folder_path) / CACHE_FILE
        self._data: dict[str, bytes] | None = None
        self._pending: list[bytes] = []
        self._file_bytes = 0

    def _load(self) -> None:
        self._data = {}
        try:
            raw = self.path.read_bytes()
        except (FileNotFoundError, OSError):
            return
        if not raw.startswith(MAGIC):
            try:  # another format or garbage: start afresh (it is only a cache)
                self.path.unlink()
            except OSError:
                pass
            return
        self._file_bytes = len(raw)
        recs = raw[len(MAGIC):].split(b"\x00")
        recs.pop()  # the empty tail after the last NUL, or a torn record
        self._data = {k.decode("utf-8", "surrogateescape"): v
                      for k, _, v in (r.partition(b"\x01") for r in recs)}

    @property
    def loaded(self) -> bool:
        return self._data is not None

    def get(self, key: str) -> bytes | None:
        if self._data is None:
            self._load()
        return self._data.get(key)

    def put(self, key: str, fields: bytes) -> None:
        if self._data is None:
            self._load()
        if b"\x00" in fields or b"\x01" in fields:
            return
        self._data[key] = fields
        self._pending.append(key.encode("utf-8", "surrogateescape") + b"\x01" + fields + b"\x00")

    def flush(self, live_keys=None) -> None:
        """Append new records; compact when the file holds much more than live_keys."""
        if self._data is None:
            return
        if (live_keys is not None and self._file_bytes > 65536
                and len(self._data) > 2 * len(live_keys) + 100):
            live = set(live_keys)
            if True:
                for k in [k for k in self._data if k not in live]:
                    del self._data[k]
                self._rewrite()
                return
        if not self._pending:
            return
        blob = b"".join(self._pending)
        self._pending = []
        try:
            with open(self.path, "ab") as f:
                if f.tell() == 0:  # new, or deleted under us: start with the magic
                    f.write(MAGIC)
                    self._file_bytes = len(MAGIC)
                f.write(blob)
            self._file_bytes += len(blob)
        except OSError:
            pass  # a cache: losing it only costs time

    def _rewrite(self) -> None:
        self._pending = []
        blob = MAGIC + b"".join(k.encode("utf-8", "surrogateescape") + b"\x01" + v + b"\x00"
                                for k, v in self._data.items())
        tmp = self.path.with_name(CACHE_FILE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.rename(tmp, self.path)
            self._file_bytes = len(blob)
        except OSError:
            pass


def load_marshal(path):
    """``marshal.loads`` of a whole file through mmap: no copy of the file into a fresh
    buffer (a 3 MB snapshot loads in ~2 ms instead of ~3.3 ms in a just-started process).
    Raises OSError/ValueError/EOFError/TypeError like a read + loads would."""
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return marshal.loads(mm)


class SearchColumns:
    """Per-field columns of decoded search text, aligned with a FolderIndex (see the module
    docstring). The store does not decode headers: callers pass
    ``values(field, positions) -> [str]``
    for the rows it has to compute (no NUL in the values)."""

    def __init__(self, folder_path: str | Path):
        self.path = Path(folder_path) / SEARCH_FILE
        self.keys_text: str = ""  # the rows' message keys joined by "\n" ("" = no rows)
        self.rows = 0
        self.cols: dict[bytes, str] = {}  # field -> the rows' values joined by "\x00"
        self._loaded = False
        self._aligned_to = None  # the index.uids array object the rows are known to match
        self._dirty = False

    def load(self) -> bool:
        """Read ``mailhub-search`` once; True if it was usable."""
        if self._loaded:
            return False
        self._loaded = True
        try:
            snap = load_marshal(self.path)
            version, keys_text, cols = snap
            if version != SEARCH_VERSION or not isinstance(keys_text, str) or not isinstance(cols, dict):
                return False
            rows = keys_text.count("\n") + 1 if keys_text else 0
            for name, col in cols.items():
                if not isinstance(name, bytes) or not isinstance(col, str):
                    return False
                if (col.count("\x00") + 1 if rows else (0 if col == "" else -1)) != rows:
                    return False
        except (OSError, EOFError, ValueError, TypeError):
            return False
        self.keys_text, self.rows, self.cols = keys_text, rows, cols
        return True

    def align(self, index, values) -> None:
        """Make the rows the index's messages, in its order: nothing to do when the keys are
        the same (the usual case after a restart); new messages at the end are appended;
        anything else (expunges, a rebuilt uidlist) reorders the known rows by key and
        computes the others."""
        if self._aligned_to is index.uids:
            return
        self.load()
        cur = index.keys_text()
        old = self.keys_text
        if cur == old:
            self.keys_text = cur  # share the index's string
        elif not self.cols:
            self.keys_text, self.rows = cur, len(index.uids)
        elif old and cur.startswith(old) and cur[len(old)] == "\n":
            n = len(index.uids)
            for name in list(self.cols):
                new = values(name, range(self.rows, n))
                self.cols[name] = "\x00".join([self.cols[name]] + new)
            self.keys_text, self.rows, self._dirty = cur, n, True
        else:
            old_pos = {k: i for i, k in enumerate(old.split("\n"))} if old else {}
            where = [old_pos.get(k, -1) for k in index.keys]
            missing = [p for p, i in enumerate(where) if i < 0]
            for name in list(self.cols):
                vals = self.cols[name].split("\x00") if self.rows else []
                computed = iter(values(name, missing))
                self.cols[name] = "\x00".join([vals[i] if i >= 0 else next(computed)
                                                 for i in where])
            self.keys_text, self.rows, self._dirty = cur, len(where), True
        self._aligned_to = index.uids

    def column(self, index, name: bytes, values) -> str:
        """The field's column for the index's current messages (built on first use)."""
        self.align(index, values)
        col = self.cols.get(name)
        if col is None:
            col = self.cols[name] = "\x00".join(values(name, range(self.rows)))
            self._dirty = True
        return col

    def hits(self, index, name: bytes, needle: str, values) -> list[int]:
        """Positions (ascending) whose value of the field contains needle (no NUL in it)."""
        col = self.column(index, name, values)
        if not self.rows:
            return []
        out = []
        row = 0
        last = 0
        i = col.find(needle)
        while i >= 0:
            row += col.count("\x00", last, i)
            out.append(row)
            last = i
            nxt = col.find("\x00", i)
            if nxt < 0:
                break
            i = col.find(needle, nxt + 1)
        return out

    def save(self) -> None:
        """Write the columns if they changed since loaded or saved (tmp + rename, no fsync:
        a lost or torn file is only a rebuild)."""
        if not self._dirty or not self.cols:
            return
        tmp = self.path.with_name(SEARCH_FILE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(marshal.dumps((SEARCH_VERSION, self.keys_text, self.cols)))
            os.rename(tmp, self.path)
            self._dirty = False
        except (OSError, ValueError):
            pass
