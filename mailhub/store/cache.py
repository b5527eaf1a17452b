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

import os
import re
from pathlib import Path

CACHE_FILE = "mailhub-cache"
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
