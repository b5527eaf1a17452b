"""HeaderCache: per-folder cache of the header fields ENVELOPE and SEARCH need, so a SEARCH FROM
over 50,000 messages reads one file instead of 50,000.

Kept in ``mailhub-cache`` in the folder: records ``<key>\\t<length>\\n<raw header lines>``,
appended as messages are first read; a torn last record is ignored; the file is rewritten
(tmp + rename) without the records of expunged messages when it grows to twice the live
size. It is only a cache: delete it and it rebuilds itself from the message files. Message
files never change content in Maildir (only names), so an entry never goes stale.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

CACHE_FILE = "mailhub-cache"
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
        self._file_bytes = len(raw)
        pos = 0
        n = len(raw)
        data = self._data
        while pos < n:
            nl = raw.find(b"\n", pos)
            if nl < 0:
                break
            key, _, length = raw[pos:nl].partition(b"\t")
            try:
                ln = int(length)
            except ValueError:
                break
            end = nl + 1 + ln
            if end > n:
                break  # torn record
            data[key.decode("utf-8", "surrogateescape")] = raw[nl + 1:end]
            pos = end

    def get(self, key: str) -> bytes | None:
        if self._data is None:
            self._load()
        return self._data.get(key)

    def put(self, key: str, fields: bytes) -> None:
        if self._data is None:
            self._load()
        self._data[key] = fields
        self._pending.append(b"%s\t%d\n" % (key.encode("utf-8", "surrogateescape"), len(fields)) + fields)

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
                f.write(blob)
            self._file_bytes += len(blob)
        except OSError:
            pass  # a cache: losing it only costs time

    def _rewrite(self) -> None:
        self._pending = []
        blob = b"".join(b"%s\t%d\n" % (k.encode("utf-8", "surrogateescape"), len(v)) + v
                        for k, v in self._data.items())
        tmp = self.path.with_name(CACHE_FILE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
            os.rename(tmp, self.path)
            self._file_bytes = len(blob)
        except OSError:
            pass
