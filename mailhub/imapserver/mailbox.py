"""SelectedMailbox: one session's view of a selected folder (sequence numbers, \\Recent) over
the shared FolderIndex, and the untagged updates (EXPUNGE/VANISHED, EXISTS, RECENT, FETCH)
that bring the view up to date.

The view is the UID array the session last reported. While nothing changes it is the very
array object of the index (``view is index.uids``), so sequence number n is index position
n-1 and an in-sync session costs no memory of its own.
"""
from __future__ import annotations

import bisect
from array import array

from mailhub.imapserver.response import seqset_text
from mailhub.store.cache import extract_fields

HEADER_READ = 16384
HEADER_MAX = 1 << 20


class BadSequence(Exception):
    pass


def flags_bytes(index, letters: str, recent: bool = False, cache: dict | None = None) -> bytes:
    key = (letters, recent)
    if cache is not None:
        v = cache.get(key)
        if v is not None:
            return v
    names = index.flag_names(letters)
    if recent:
        names.append("\\Recent")
    v = b"(" + " ".join(names).encode("utf-8", "surrogateescape") + b")"
    if cache is not None and len(cache) < 4096:
        cache[key] = v
    return v


def read_header(index, pos: int) -> bytes | None:
    f = index.open(pos)
    if f is None:
        return None
    with f:
        data = f.read(HEADER_READ)
        while len(data) < HEADER_MAX:
            if b"\r\n\r\n" in data or b"\n\n" in data:
                break
            more = f.read(HEADER_READ * 4)
            if not more:
                break
            data += more
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i + len(sep)]
    return data


def envelope_fields(index, pos: int) -> bytes | None:
    """The cached ENVELOPE/SEARCH header fields of a message (read and cached on a miss)."""
    key = index.key(pos)
    blob = index.cache.get(key)
    if blob is None:
        header = read_header(index, pos)
        if header is None:
            return None
        blob = extract_fields(header)
        index.cache.put(key, blob)
    return blob


def read_all(index, pos: int) -> bytes | None:
    f = index.open(pos)
    if f is None:
        return None
    with f:
        return f.read()


class SelectedMailbox:
    def __init__(self, index, readonly: bool):
        self.index = index
        self.readonly = readonly
        self.view = index.uids
        self.known_modseq = index.highestmodseq
        self.recent: set[int] = set()
        self.reported: dict[int, int] = {}
        self.flag_cache: dict = index.flag_cache  # shared: letters -> bytes never changes
        self.keywords_seen = len(index.keywords)
        if not readonly:
            self._claim_recent(index.uids)

    def _claim_recent(self, uids) -> None:
        idx = self.index
        if idx.recent_floor < idx.uidnext:
            start = bisect.bisect_left(uids, idx.recent_floor)
            self.recent.update(uids[start:])
            idx.recent_floor = idx.uidnext

    def flags_lines(self) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS, with this folder's keywords."""
        idx = self.index
        kw = "".join(" " + k for k in idx.keywords if k)
        flags = "\\Answered \\Flagged \\Deleted \\Seen \\Draft" + kw
        out = [f"* FLAGS ({flags})\r\n".encode("utf-8", "surrogateescape")]
        if self.readonly:
            out.append(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        else:
            perm = flags + (" \\*" if len(idx.keywords) < 26 else "")
            out.append(f"* OK [PERMANENTFLAGS ({perm})] Flags permitted\r\n".encode(
                "utf-8", "surrogateescape"))
        return out

    @property
    def exists(self) -> int:
        return len(self.view)

    def pos_of_seq(self, seq: int) -> int:
        if self.view is self.index.uids:
            return seq - 1
        return self.index.pos(self.view[seq - 1])

    def seq_of_uid(self, uid: int) -> int:
        i = bisect.bisect_left(self.view, uid)
        if i < len(self.view) and self.view[i] == uid:
            return i + 1
        return 0

    def resolve(self, seqset, uid: bool) -> list[tuple[int, int, int]]:
        """[(seq, uid, index pos)] ascending; pos -1 for messages expunged meanwhile."""
        view = self.view
        n = len(view)
        out = []
        same = view is self.index.uids
        if uid:
            if not n:
                return out
            largest = view[-1]
            rs = seqset.resolve(largest)
            if len(rs) == 1 and rs[0][0] <= view[0] and rs[0][1] >= largest:
                # the whole mailbox (1:*): no per-message range bookkeeping
                if same:
                    return [(i + 1, u, i) for i, u in enumerate(view)]
                pos = self.index.pos
                return [(i + 1, u, pos(u)) for i, u in enumerate(view)]
            seen = set()
            for lo, hi in seqset.resolve(largest):
                a = bisect.bisect_left(view, lo)
                b = bisect.bisect_right(view, hi)
                for i in range(a, b):
                    if i not in seen:
                        seen.add(i)
            for i in sorted(seen):
                u = view[i]
                out.append((i + 1, u, i if same else self.index.pos(u)))
            return out
        if n == 0 and all(lo is None or hi is None for lo, hi in seqset.ranges):
            return out  # "1:*" on an empty mailbox: nothing, not an error (as Dovecot)
        seen = set()
        for lo, hi in seqset.resolve(n):
            if lo < 1 or hi > n:
                raise BadSequence("invalid message sequence number")
            seen.update(range(lo, hi + 1))
        for s in sorted(seen):
            u = view[s - 1]
            out.append((s, u, s - 1 if same else self.index.pos(u)))
        return out

    def updates(self, allow_expunge: bool, condstore: bool, qresync: bool) -> list[bytes]:
        """Untagged responses for what changed since the view was last reported."""
        idx = self.index
        out: list[bytes] = []
        view = self.view
        cur = idx.uids
        old_max = view[-1] if len(view) else 0
        old_len = len(view)
        if view is not cur:
            n = len(view)
            if len(cur) >= n and cur[:n] == view:
                appended = cur[n:]
                gone = []
            else:
                curset = None
                gone = []
                for i in range(n - 1, -1, -1):
                    u = view[i]
                    if idx.pos(u) < 0:
                        gone.append((i + 1, u))
                start = bisect.bisect_right(cur, old_max)
                appended = cur[start:]
            if gone and allow_expunge:
                if qresync:
                    out.append(b"* VANISHED " + seqset_text(u for _s, u in gone).encode() + b"\r\n")
                else:
                    out.extend(b"* %d EXPUNGE\r\n" % s for s, _u in gone)
                for _s, u in gone:
                    self.recent.discard(u)
                self.view = cur
            elif gone:
                self.view = array("I", view)
                self.view.extend(appended)
            else:
                self.view = cur
            if appended and not self.readonly:
                self._claim_recent(appended)
            if len(self.view) != old_len or appended:
                out.append(b"* %d EXISTS\r\n" % len(self.view))
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        if len(idx.keywords) != self.keywords_seen:
            self.keywords_seen = len(idx.keywords)
            out.extend(self.flags_lines())
        # flag changes since the last report
        if idx.highestmodseq > self.known_modseq:
            uids = self._changed_since(self.known_modseq, old_max)
            for u in uids:
                p = idx.pos(u)
                if p < 0:
                    continue
                ms = idx.modseqs[p]
                if self.reported.get(u) == ms:
                    continue
                seq = self.seq_of_uid(u) if self.view is not cur else p + 1
                if not seq:
                    continue
                item = b"FLAGS " + flags_bytes(idx, idx.flags[p], u in self.recent, self.flag_cache)
                if qresync:
                    item = b"UID %d " % u + item
                if condstore:
                    item += b" MODSEQ (%d)" % ms
                out.append(b"* %d FETCH (%s)\r\n" % (seq, item))
            self.known_modseq = idx.highestmodseq
        self.reported.clear()
        return out

    def _changed_since(self, modseq: int, old_max: int) -> list[int]:
        idx = self.index
        if modseq >= idx.changes_floor:
            i = bisect.bisect_right(idx.changes, (modseq, 1 << 40))
            uids = {u for _m, u in idx.changes[i:] if u <= old_max}
            return sorted(uids)
        return [u for u, m in zip(idx.uids, idx.modseqs) if m > modseq and u <= old_max]
