"""FolderIndex: the per-folder IMAP view of a Maildir (UIDs, flags, MODSEQ), kept in step with it.

The Maildir is the source of truth: message files, and flags in the ``:2,`` info of their
names (D F P R S T, keywords as letters a-z mapped per folder in ``mailhub-keywords``, one
``<n> <name>`` per line). The index only adds what Maildir cannot hold:

- ``mailhub-uidlist`` in the folder: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and uid/modseq/key
  per message. It is a compacted snapshot followed by appended change records
  (``+uid modseq key`` new message, ``=uid modseq`` flag change, ``-uid modseq`` expunge), so a
  flag change costs one small append, not a rewrite; it is rewritten atomically (tmp + fsync +
  rename) when the records outgrow the snapshot. A torn last record (crash) is ignored. If the
  file is lost or unreadable the index is rebuilt with a NEW UIDVALIDITY (clients then
  resynchronise), the only case where UIDVALIDITY changes.
- in memory: parallel arrays ordered by UID (``uids`` is replaced, never mutated, when messages
  come or go, so sessions can keep the array they last saw as their view at no cost), a
  key -> uid map, a change log (modseq, uid) for flag updates, and expunged (modseq, uid).

- ``mailhub-index.snap``: a marshal image of the arrays, valid only for the exact uidlist
  (size, mtime) it was taken with; it makes a cold load one read and no directory listing.
  ``mailhub-envelopes`` and ``mailhub-search`` (SEARCH's header columns, cache.SearchColumns)
  are written with it.

``sync()`` brings the index up to date with the directories: it is cheap when nothing changed
(two ``stat`` calls), scans only ``new/`` after a delivery notice, and rescans both
directories when their mtimes moved or an in-process change was announced by MailboxEvents.
``IndexRegistry`` shares one FolderIndex per folder between all sessions of the process.
"""
from __future__ import annotations

import bisect
import marshal
import os
import re
import time
from array import array
from pathlib import Path

from twisted.logger import Logger

from mailhub.store.cache import HeaderCache, SearchColumns, load_marshal
from mailhub.store.maildir import MAILDIR_FLAGS, _sort_key, split_filename, unique_name

log = Logger(namespace="mailhub.store.index")

UIDLIST = "mailhub-uidlist"
SNAPSHOT = "mailhub-index.snap"
KEYWORDS = "mailhub-keywords"
ENVELOPES = "mailhub-envelopes"
ENVELOPES_KEEP = 5000
SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
                "S": "\\Seen", "T": "\\Deleted"}  # P (passed) is $Forwarded, as in Dovecot
FLAG_LETTERS = {v.lower(): k for k, v in SYSTEM_FLAGS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
CHANGELOG_MAX = 20000
_NORM: dict[str, str] = {"": "", "S": "S"}
_SNAP_RE = re.compile(rb"^(\d+) (\d+) ([^\n]+)$", re.M)
_LOG_RE = re.compile(rb"^([-+=])(\d+) (\d+)(?: ([^\n]+))?$", re.M)


_last_validity = 0


def _new_uidvalidity(previous: int) -> int:
    """Time-based, but never the same value twice in this process (two rebuilds within one
    second must not share a UIDVALIDITY)."""
    global _last_validity
    v = max(int(time.time()), previous + 1, _last_validity + 1)
    _last_validity = v
    return v


class FolderIndex:
    def __init__(self, path: str | Path, events=None, address: str = "", name: str = "INBOX",
                 fsync: bool = True):
        self.path = Path(path)
        self._dir = str(self.path)  # plain strings: pathlib joins cost more than the stat
        self._new_dir = os.path.join(self._dir, "new")
        self._cur_dir = os.path.join(self._dir, "cur")
        self.events = events
        self.address = address
        self.name = name
        self.fsync = fsync
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1
        self.uids = array("I")
        self._keys: list[str] | None = []
        self._files: list[str] | None = []  # "new/<name>" or "cur/<name>"
        self._lazy: tuple | None = None  # (joined keys, file exceptions) from a snapshot
        self.flags: list[str] = []      # sorted maildir letters incl. keyword letters
        self.modseqs = array("Q")
        self._key_uid: dict[str, int] | None = {}
        self.changes: list[tuple[int, int]] = []    # (modseq, uid) flag changes, ascending
        self.changes_floor = 0                       # changes below this modseq were trimmed
        self.expunged: list[tuple[int, int]] = []   # (modseq, uid)
        self.keywords: list[str] = []
        self.recent_floor = 1
        self._mtimes = (None, None)
        self._dirty_all = True
        self._dirty_new = False
        self._log_records = 0
        self._notifying = False
        self._announces = 0  # MailboxEvents notices seen (counted once each, by the registry)
        self._known: dict | None = None
        self._names_new: set[str] = set()
        self._names_cur: set[str] = set()
        self._snap_stamp = None
        self._snap_time = -1e9
        self.users = 0
        self.cache = HeaderCache(self.path)
        self.search = SearchColumns(self.path)  # SEARCH's decoded header columns
        self.flag_cache: dict = {}  # for protocol code: (letters, recent) -> wire bytes
        self.envelope_cache: dict = {}  # for protocol code: key -> rendered ENVELOPE
        self._env_loaded = False
        self._env_saved = 0
        self._load()

    # keys and files are built from the snapshot only when first used: a SELECT after a
    # restart needs neither (no per-message string objects on the cold path)
    @property
    def keys(self) -> list[str]:
        if self._keys is None:
            joined = self._lazy[0]
            self._keys = joined.split("\n") if joined else []
        return self._keys

    @keys.setter
    def keys(self, value: list[str]) -> None:
        self._keys = value

    @property
    def files(self) -> list[str]:
        if self._files is None:
            exc = self._lazy[1]
            self._files = [f"cur/{k}:2,{fl}" for k, fl in zip(self.keys, self.flags)]
            for i, f in exc.items():
                self._files[i] = f
            self._lazy = None
        return self._files

    @files.setter
    def files(self, value: list[str]) -> None:
        if self._keys is None:
            self.keys  # noqa: B018 (materialise before the snapshot's strings are dropped)
        self._files = value
        self._lazy = None

    def keys_text(self) -> str:
        """The keys joined by newlines (the snapshot's own string while the list was not
        built)."""
        if self._keys is None:
            return self._lazy[0]
        return "\n".join(self._keys)

    def key(self, i: int) -> str:
        """The key at position i, without building the key list after a snapshot load."""
        if self._keys is not None:
            return self._keys[i]
        joined, _exc, starts = self._lazy
        a = starts[i]
        b = starts[i + 1] - 1 if i + 1 < len(starts) else len(joined)
        return joined[a:b]

    def _file(self, i: int) -> str:
        if self._files is not None:
            return self._files[i]
        f = self._lazy[1].get(i)
        return f if f is not None else f"cur/{self.key(i)}:2,{self.flags[i]}"

    @property
    def key_uid(self) -> dict[str, int]:
        if self._key_uid is None:
            self._key_uid = dict(zip(self.keys, self.uids))
        return self._key_uid

    @key_uid.setter
    def key_uid(self, value: dict[str, int]) -> None:
        self._key_uid = value

    # -- persistence -----------------------------------------------------------------------
    def _uidlist_stamp(self):
        try:
            st = os.stat(self.path / UIDLIST)
            return (st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    def _load_snapshot(self) -> bool:
        """Load ``mailhub-index.snap`` if it describes the current uidlist exactly: a cold
        SELECT then needs no parsing and, when the directories did not move, no listing."""
        stamp = self._uidlist_stamp()
        if stamp is None:
            return False
        try:
            snap = load_marshal(self.path / SNAPSHOT)  # (marshal.load(f) reads piecemeal: 10x slower)
        except (OSError, EOFError, ValueError, TypeError):
            return False
        try:
            (version, size, mtime, mt_new, mt_cur, self_validity, uidnext, hms, uids, modseqs,
             keys, offsets, exc, flags) = snap
            if version != 3 or (size, mtime) != stamp:
                return False
            u = array("I")
            u.frombytes(uids)
            m = array("Q")
            m.frombytes(modseqs)
            if not (len(u) == len(m) == len(flags) == (keys.count("\n") + 1 if keys else 0)):
                return False
            if not isinstance(exc, dict) or any(not 0 <= i < len(u) for i in exc):
                return False
            starts = array("I")
            starts.frombytes(offsets)
            if len(starts) != len(u) or (starts and (starts[0] != 0 or starts[-1] > len(keys))):
                return False
        except (ValueError, TypeError, AttributeError):
            return False
        self.uidvalidity, self.uidnext, self.highestmodseq = self_validity, uidnext, hms
        self.uids, self.modseqs, self.flags = u, m, flags
        self._keys = self._files = None
        self._lazy = (keys, exc, starts)
        self._key_uid = None  # built on first use: a plain SELECT + FETCH never needs it
        self._names_new = self._names_cur = None  # built from files when first needed
        self._mtimes = (mt_new, mt_cur)
        self._dirty_all = False
        self._known = None
        self._snap_stamp = stamp
        return True

    def save_snapshot(self, min_interval: float = 0.0) -> None:
        """Write the snapshot if the uidlist moved since the last one (atomic, no fsync: a
        lost or stale snapshot is simply ignored); at most every ``min_interval`` seconds."""
        if self._known is not None:
            return
        now = time.monotonic()
        if min_interval and now - self._snap_time < min_interval:
            return
        self._snap_time = now
        self.save_envelopes()
        self.search.save()
        stamp = self._uidlist_stamp()
        if stamp is None or stamp == self._snap_stamp:
            return
        if self._files is None:
            exc = self._lazy[1]
        else:
            exc = {i: f for i, (f, k, fl) in enumerate(zip(self._files, self.keys, self.flags))
                   if f != f"cur/{k}:2,{fl}"}
        # keys as one string (split when first used); files only where they differ from
        # "cur/<key>:2,<flags>"
        keys = self.keys
        starts = array("I", [0])
        pos = 0
        for k in keys[:-1]:
            pos += len(k) + 1
            starts.append(pos)
        if not keys:
            starts = array("I")
        data = marshal.dumps((3, stamp[0], stamp[1], self._mtimes[0], self._mtimes[1],
                              self.uidvalidity, self.uidnext, self.highestmodseq,
                              self.uids.tobytes(), self.modseqs.tobytes(), "\n".join(keys),
                              starts.tobytes(), exc, self.flags))
        tmp = self.path / (SNAPSHOT + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, self.path / SNAPSHOT)
            self._snap_stamp = stamp
        except OSError as e:
            log.warn("cannot write {path}: {err}", path=str(self.path / SNAPSHOT), err=e)

    def load_envelopes(self) -> bool:
        """Merge the persisted ENVELOPEs (``mailhub-envelopes``: those of the newest messages
        rendered before the last shutdown) into ``envelope_cache``, once; True if it did.
        Keyed by message key (a message never changes), so it cannot be stale; deleting the
        file only costs time."""
        if self._env_loaded:
            return False
        self._env_loaded = True
        try:
            version, envs = load_marshal(self.path / ENVELOPES)
            if version != 1 or not isinstance(envs, dict):
                return False
        except (OSError, EOFError, ValueError, TypeError):
            return False
        envs.update(self.envelope_cache)
        self.envelope_cache = envs
        self._env_saved = len(envs)
        return True

    def save_envelopes(self) -> None:
        """Persist the cached ENVELOPEs of the newest messages (at most ENVELOPES_KEEP):
        clients fetch the envelopes of the newest messages after a restart."""
        cache = self.envelope_cache
        if not cache or len(cache) == self._env_saved:
            return
        keep = {}
        for k in reversed(self.keys):
            v = cache.get(k)
            if v is not None:
                keep[k] = v
                if len(keep) >= ENVELOPES_KEEP:
                    break
        tmp = self.path / (ENVELOPES + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(marshal.dumps((1, keep)))
            os.rename(tmp, self.path / ENVELOPES)
            self._env_saved = len(cache)
        except (OSError, ValueError) as e:
            log.warn("cannot write {path}: {err}", path=str(self.path / ENVELOPES), err=e)

    def _load(self) -> None:
        self._load_keywords()
        if self._load_snapshot():
            self.recent_floor = self.uidnext
            self.changes_floor = self.highestmodseq
            return
        try:
            data = (self.path / UIDLIST).read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as e:
            log.warn("cannot read {path}: {err}", path=str(self.path / UIDLIST), err=e)
            data = None
        ok = False
        if data:
            ok = self._parse(data)
        if not ok:
            if data:
                log.warn("{path} unreadable; rebuilding with a new UIDVALIDITY",
                         path=str(self.path / UIDLIST))
            self.uidvalidity = _new_uidvalidity(self.uidvalidity)
            self.uidnext = 1
            self.highestmodseq = 1
            self.uids, self.keys, self.files, self.flags = array("I"), [], [], []
            self.modseqs, self.key_uid = array("Q"), {}
            self._known = {}
            self._write_snapshot_entries([])
        self.recent_floor = self.uidnext
        self.changes_floor = self.highestmodseq

    def _parse(self, data: bytes) -> bool:
        nl = data.find(b"\n")
        if nl < 0:
            return False
        head = data[:nl].split()
        try:
            if head[0] != b"mailhub-uidlist" or head[1] != b"1":
                return False
            self.uidvalidity = int(head[2])
            self.uidnext = int(head[3])
            self.highestmodseq = int(head[4])
        except (IndexError, ValueError):
            return False
        end = data.rfind(b"\n") + 1  # a torn last record (no newline) is ignored
        body = data[nl + 1:end]
        # the compacted snapshot: "uid modseq key" lines, parsed by one regex in C
        snap = _SNAP_RE.findall(body)
        entries: dict[int, list] = {int(u): [k.decode("utf-8", "surrogateescape"), int(m)]
                                    for u, m, k in snap}
        records = 0
        hms = self.highestmodseq
        if entries:
            self.uidnext = max(self.uidnext, max(entries) + 1)
            hms = max(hms, max(v[1] for v in entries.values()))
        for op, u, m, k in _LOG_RE.findall(body):
            uid, ms = int(u), int(m)
            records += 1
            if ms > hms:
                hms = ms
            if op == b"+":
                entries[uid] = [k.decode("utf-8", "surrogateescape"), ms]
                if uid >= self.uidnext:
                    self.uidnext = uid + 1
            elif op == b"=":
                e = entries.get(uid)
                if e is not None:
                    e[1] = ms
            else:
                entries.pop(uid, None)
                self.expunged.append((ms, uid))
        self.highestmodseq = hms
        self._log_records = records
        # the uid map is known; files and flags come from the directories at the first sync
        self._known = entries
        self.uids, self.keys, self.files, self.flags = array("I"), [], [], []
        self.modseqs = array("Q")
        self.key_uid = {}
        return True

    def _write_snapshot_entries(self, entries) -> None:
        lines = [f"mailhub-uidlist 1 {self.uidvalidity} {self.uidnext} {self.highestmodseq}\n"]
        lines.extend(f"{u} {m} {k}\n" for u, m, k in entries)
        tmp = self.path / (UIDLIST + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(lines))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.rename(tmp, self.path / UIDLIST)
        except OSError as e:
            log.warn("cannot write {path}: {err}", path=str(self.path / UIDLIST), err=e)
        self._log_records = 0
        self.expunged = []

    def _compact(self) -> None:
        self._write_snapshot_entries(zip(self.uids, self.modseqs, self.keys))

    def _append_records(self, lines: list[str]) -> None:
        if not lines:
            return
        self._log_records += len(lines)
        if self._log_records > 2 * len(self.uids) + 1000:
            self._compact()
            return
        try:
            fd = os.open(self.path / UIDLIST, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, "".join(lines).encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except FileNotFoundError:
            self._compact()
        except OSError as e:
            log.warn("cannot append to {path}: {err}", path=str(self.path / UIDLIST), err=e)

    def _load_keywords(self) -> None:
        try:
            text = (self.path / KEYWORDS).read_text("utf-8")
        except (FileNotFoundError, UnicodeError):
            return
        kws: dict[int, str] = {}
        for line in text.splitlines():
            n, _, name = line.partition(" ")
            if n.isdigit() and name and int(n) < len(KEYWORD_LETTERS):
                kws[int(n)] = name
        self.keywords = [kws.get(i, "") for i in range(max(kws) + 1)] if kws else []

    def keyword_letter(self, name: str, create: bool = True) -> str | None:
        for i, k in enumerate(self.keywords):
            if k.lower() == name.lower():
                return KEYWORD_LETTERS[i]
        if not create or len(self.keywords) >= len(KEYWORD_LETTERS):
            return None
        self.keywords.append(name)
        tmp = self.path / (KEYWORDS + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{i} {k}\n" for i, k in enumerate(self.keywords) if k))
        os.rename(tmp, self.path / KEYWORDS)
        return KEYWORD_LETTERS[len(self.keywords) - 1]

    def flag_names(self, letters: str) -> list[str]:
        out = []
        for c in letters:
            if c in SYSTEM_FLAGS:
                out.append(SYSTEM_FLAGS[c])
            elif "a" <= c <= "z":
                i = ord(c) - 97
                if i < len(self.keywords) and self.keywords[i]:
                    out.append(self.keywords[i])
        return out

    def letters_for(self, names, create: bool = True) -> str | None:
        """Maildir letters for IMAP flag names; None if a keyword slot is not available."""
        out = set()
        for n in names:
            low = n.lower()
            if low in FLAG_LETTERS:
                out.add(FLAG_LETTERS[low])
            elif low == "\\recent" or n.startswith("\\"):
                continue
            else:
                c = self.keyword_letter(n, create)
                if c is None:
                    if create:
                        return None
                    continue
                out.add(c)
        return "".join(sorted(out))

    # -- sync with the directories --------------------------------------------------------
    def invalidate(self, what: str = "changed") -> None:
        """A change was announced (MailboxEvents); ours are already applied."""
        if self._notifying:
            return
        if what == "exists":
            self._dirty_new = True
        else:
            self._dirty_all = True

    def announced(self, what: str) -> None:
        """A MailboxEvents notice for this folder (one call per notice)."""
        self._announces += 1
        self.invalidate(what)

    def own_change_begin(self):
        """Before a change made through the store's group commit (APPEND): remember the
        state, so ``own_change_end`` can take the new directory mtimes as known."""
        return (self._stat_mtimes(), self._announces, self._dirty_all or self._dirty_new)

    def own_change_end(self, token) -> None:
        """After our committed files were registered with ``add_file``: if the directories
        were in sync before and the only notice since was our commit's own, the moved mtimes
        are our own doing and need no re-listing (the same trade-off as ``_after_own_change``:
        a change by another program within the commit window is noticed at the next change)."""
        mt0, ann0, dirty = token
        if dirty or self._dirty_all or self._known is not None:
            return
        if self._announces - ann0 > 1 or mt0 != self._mtimes:
            return
        self._mtimes = self._stat_mtimes()
        self._dirty_new = False

    def _stat_mtimes(self):
        try:
            return (os.stat(self._new_dir).st_mtime_ns, os.stat(self._cur_dir).st_mtime_ns)
        except FileNotFoundError:
            return (None, None)

    def sync_announced(self) -> None:
        """Apply announced changes only (no stat when none is pending): used when one event
        fans out to many IDLE sessions of the same folder."""
        if self._dirty_all or self._dirty_new:
            self.sync()

    def sync(self) -> None:
        mt = self._stat_mtimes()
        if mt[0] is None:
            raise FileNotFoundError(str(self.path))
        if self._dirty_all or mt[1] != self._mtimes[1] or (mt[0] != self._mtimes[0] and not self._dirty_new):
            self._full_scan(mt)
        elif self._dirty_new or mt[0] != self._mtimes[0]:
            self._scan_new(mt)

    def _listdir(self, sub: str) -> set[str]:
        try:
            names = set(os.listdir(os.path.join(self._dir, sub)))
        except FileNotFoundError:
            return set()
        dots = [n for n in names if n[:1] == "."]
        if dots:
            names.difference_update(dots)
        return names

    @staticmethod
    def _split(sub: str, fn: str) -> tuple[str, str]:
        key, sep, info = fn.partition(":")
        if sub == "new" or not sep or not info.startswith("2,"):
            return key, ""
        fl = info[2:]
        norm = _NORM.get(fl)
        if norm is None:
            norm = "".join(sorted(set(fl)))
            if len(_NORM) < 4096:
                _NORM[fl] = norm
        return key, norm

    def _full_scan(self, mt) -> None:
        """Compare the directory listings with the last ones (set differences, so an
        unchanged folder of any size costs two listdir calls) and apply what moved."""
        self._dirty_all = self._dirty_new = False
        self._mtimes = mt
        new_names = self._listdir("new")
        cur_names = self._listdir("cur")
        records: list[str] = []
        if self._known is not None:
            self._initial_build(new_names, cur_names, records)
        else:
            self._ensure_names()
            added: dict[str, tuple[str, str]] = {}
            gone: set[str] = set()
            for sub, now, old in (("new", new_names, self._names_new), ("cur", cur_names, self._names_cur)):
                if now == old:
                    continue
                for fn in old - now:
                    gone.add(self._split(sub, fn)[0])
                for fn in now - old:
                    key, fl = self._split(sub, fn)
                    added[key] = (f"{sub}/{fn}", fl)
            expunged = []
            for key in gone:
                uid = self.key_uid.get(key)
                i = self.pos(uid) if uid is not None else -1
                if key in added:
                    if i >= 0:
                        f, fl = added.pop(key)
                        self._update_file(i, f, fl, records)
                    continue
                if i >= 0:
                    expunged.append(i)
            for key in [k for k in added if k in self.key_uid]:
                i = self.pos(self.key_uid[key])
                f, fl = added.pop(key)
                if i >= 0:
                    self._update_file(i, f, fl, records)
            if expunged:
                self._remove_positions(sorted(expunged), records)
            if added:
                self._add_found(added, records)
        self._names_new, self._names_cur = new_names, cur_names
        self._append_records(records)
        self._trim_changes()

    def _ensure_names(self) -> None:
        if self._names_new is None:
            self._names_new = {f[4:] for f in self.files if f[0] == "n"}
            self._names_cur = {f[4:] for f in self.files if f[0] == "c"}

    def _track(self, f: str, present: bool) -> None:
        """Keep the last listing in step with our own renames/unlinks/links."""
        self._ensure_names()
        sub, _, fn = f.partition("/")
        names = self._names_new if sub == "new" else self._names_cur
        if present:
            names.add(fn)
        else:
            names.discard(fn)

    def _update_file(self, i: int, f: str, fl: str, records: list[str]) -> None:
        self.files[i] = f
        if fl != self.flags[i]:
            self.flags[i] = fl
            self.highestmodseq += 1
            self.modseqs[i] = self.highestmodseq
            self.changes.append((self.highestmodseq, self.uids[i]))
            records.append(f"={self.uids[i]} {self.highestmodseq}\n")

    def _initial_build(self, new_names, cur_names, records) -> None:
        """First scan after loading the uidlist: attach the files to the known UIDs."""
        known = self._known
        self._known = None
        by_key = {v[0]: (u, v[1]) for u, v in known.items()}
        rows = []
        fresh: dict[str, tuple[str, str]] = {}
        split = self._split
        norm = _NORM
        for sub, names in (("new", new_names), ("cur", cur_names)):
            prefix = sub + "/"
            for fn in names:
                key, sep, info = fn.partition(":")
                fl = ""
                if sep and sub == "cur":
                    fl = norm.get(info[2:]) if info[:2] == "2," else ""
                    if fl is None:
                        key, fl = split(sub, fn)
                hit = by_key.get(key)
                if hit is None:
                    fresh[key] = (prefix + fn, fl)
                else:
                    rows.append((hit[0], key, prefix + fn, fl, hit[1]))
        rows.sort()
        present = {r[0] for r in rows}
        for uid in known:
            if uid not in present:
                self.highestmodseq += 1
                records.append(f"-{uid} {self.highestmodseq}\n")
                self.expunged.append((self.highestmodseq, uid))
        self.uids = array("I", [r[0] for r in rows])
        self.keys = [r[1] for r in rows]
        self.files = [r[2] for r in rows]
        self.flags = [r[3] for r in rows]
        self.modseqs = array("Q", [r[4] for r in rows])
        self.key_uid = {r[1]: r[0] for r in rows}
        if fresh:
            self._add_found(fresh, records)

    def _scan_new(self, mt) -> None:
        self._dirty_new = False
        self._mtimes = (mt[0], self._mtimes[1])
        now = self._listdir("new")
        self._ensure_names()
        found = {}
        for fn in now - self._names_new:
            key = fn.partition(":")[0]
            if key not in self.key_uid:
                found[key] = (f"new/{fn}", "")
        self._names_new |= now
        if found:
            records: list[str] = []
            self._add_found(found, records)
            self._append_records(records)

    def _add_found(self, found: dict, records: list[str]) -> None:
        uids = array("I", self.uids)
        modseqs = self.modseqs
        for key in sorted(found, key=_sort_key):
            f, fl = found[key]
            uid = self.uidnext
            self.uidnext += 1
            self.highestmodseq += 1
            uids.append(uid)
            self.keys.append(key)
            self.files.append(f)
            self.flags.append(fl)
            modseqs.append(self.highestmodseq)
            self.key_uid[key] = uid
            records.append(f"+{uid} {self.highestmodseq} {key}\n")
        self.uids = uids

    def _remove_positions(self, positions: list[int], records: list[str]) -> None:
        drop = set(positions)
        for i in positions:
            self.highestmodseq += 1
            uid = self.uids[i]
            records.append(f"-{uid} {self.highestmodseq}\n")
            self.expunged.append((self.highestmodseq, uid))
            self.key_uid.pop(self.keys[i], None)
        keep = [i for i in range(len(self.keys)) if i not in drop]
        self.uids = array("I", (self.uids[i] for i in keep))
        self.keys = [self.keys[i] for i in keep]
        self.files = [self.files[i] for i in keep]
        self.flags = [self.flags[i] for i in keep]
        self.modseqs = array("Q", (self.modseqs[i] for i in keep))

    def _trim_changes(self) -> None:
        if len(self.changes) > CHANGELOG_MAX:
            cut = len(self.changes) // 2
            self.changes_floor = self.changes[cut - 1][0]
            del self.changes[:cut]

    # -- lookups ---------------------------------------------------------------------------
    def pos(self, uid: int) -> int:
        """Position of a UID, or -1 if it is not (any more) in the folder."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i
        return -1

    def file_path(self, i: int) -> str:
        return os.path.join(self._dir, self._file(i))

    def open(self, i: int):
        """The message file at position i, or None if it was deleted. A file renamed by
        someone else (flags changed) is found again by its key; positions never shift here
        (the index is only marked for a rescan, done at the next sync)."""
        try:
            return open(os.path.join(self._dir, self._file(i)), "rb")
        except FileNotFoundError:
            self._dirty_all = True
        key = self.keys[i]
        for sub in ("cur", "new"):
            try:
                names = os.listdir(os.path.join(self._dir, sub))
            except FileNotFoundError:
                continue
            for fn in names:
                if fn.startswith(key) and fn.partition(":")[0] == key:
                    try:
                        f = open(os.path.join(self._dir, sub, fn), "rb")
                    except FileNotFoundError:
                        continue
                    self._ensure_names()
                    self.files[i] = f"{sub}/{fn}"
                    return f
        return None

    def size(self, i: int) -> int:
        key = self.keys[i]
        for part in key.split(",")[1:]:
            if part.startswith("S="):
                try:
                    return int(part[2:])
                except ValueError:
                    break
        try:
            return os.stat(self.file_path(i)).st_size
        except OSError:
            return 0

    def internaldate(self, i: int) -> float:
        try:
            return os.stat(self.file_path(i)).st_mtime
        except OSError:
            return time.time()

    # -- changes by IMAP sessions -----------------------------------------------------------
    def set_flags(self, positions_letters) -> list[int]:
        """Apply [(pos, new_letters)]: rename files into cur/ with the new info. Returns the
        positions changed; notifies MailboxEvents once."""
        changed = []
        records = []
        before = self._stat_mtimes()
        for i, letters in positions_letters:
            if letters == self.flags[i]:
                continue
            key = self.keys[i]
            new_file = f"cur/{key}:2,{letters}"
            try:
                os.rename(os.path.join(self._dir, self.files[i]), os.path.join(self._dir, new_file))
            except FileNotFoundError:
                self._dirty_all = True
                continue
            self._track(self.files[i], False)
            self._track(new_file, True)
            self.files[i] = new_file
            self.flags[i] = letters
            self.highestmodseq += 1
            self.modseqs[i] = self.highestmodseq
            self.changes.append((self.highestmodseq, self.uids[i]))
            records.append(f"={self.uids[i]} {self.highestmodseq}\n")
            changed.append(i)
        if changed:
            self._after_own_change(before)
            self._append_records(records)
            self._trim_changes()
            self._notify("flags")
        return changed

    def expunge(self, positions: list[int]) -> list[int]:
        """Delete the messages at these positions; returns the UIDs removed."""
        if not positions:
            return []
        before = self._stat_mtimes()
        removed = []
        for i in positions:
            try:
                os.unlink(os.path.join(self._dir, self.files[i]))
            except FileNotFoundError:
                pass
            self._track(self.files[i], False)
            removed.append(i)
        records: list[str] = []
        uids = [self.uids[i] for i in removed]
        self._remove_positions(sorted(removed), records)
        self._after_own_change(before)
        self._append_records(records)
        self._notify("expunge")
        return uids

    def add_file(self, key: str, subdir: str, filename: str) -> int:
        """Register a message this process just wrote (APPEND, COPY); returns its UID."""
        if self._known is not None:
            self.sync()
        uid = self.key_uid.get(key)
        if uid is not None:
            return uid
        before = self._stat_mtimes()
        records: list[str] = []
        fl = split_filename(filename)[1] if subdir == "cur" else ""
        self._add_found({key: (f"{subdir}/{filename}", "".join(sorted(set(fl))))}, records)
        self._track(f"{subdir}/{filename}", True)
        self._after_own_change(before)
        self._append_records(records)
        return self.key_uid[key]

    def _after_own_change(self, before) -> None:
        # our own renames moved the directory mtimes: if nobody else had changed them since
        # our last scan, the new mtimes are known state and need no rescan
        if before == self._mtimes:
            self._mtimes = self._stat_mtimes()

    def _notify(self, what: str) -> None:
        if self.events is None:
            return
        self._notifying = True
        try:
            self.events.notify(self.address, self.name, what)
        finally:
            self._notifying = False

    def copy_to(self, i: int, target: "FolderIndex", letters: str) -> int | None:
        """Copy the message at position i into another folder (hard link when possible);
        returns the new UID there, None if the source vanished."""
        src = os.path.join(self._dir, self.files[i])
        key = unique_name(self.size(i))
        name = f"{key}:2,{letters}"
        dst = os.path.join(target.path, "cur", name)
        try:
            os.link(src, dst)
        except FileNotFoundError:
            self._dirty_all = True
            return None
        except OSError:
            tmp = os.path.join(target.path, "tmp", key)
            try:
                with open(src, "rb") as fi, open(tmp, "wb") as fo:
                    while True:
                        b = fi.read(1 << 20)
                        if not b:
                            break
                        fo.write(b)
                    fo.flush()
                    if self.fsync:
                        os.fsync(fo.fileno())
                os.rename(tmp, dst)
            except FileNotFoundError:
                self._dirty_all = True
                return None
        return target.add_file(key, "cur", name)

    def status(self) -> dict:
        unseen = sum(1 for f in self.flags if "S" not in f)
        recent = len(self.uids) - bisect.bisect_left(self.uids, self.recent_floor)
        return {"MESSAGES": len(self.uids), "UIDNEXT": self.uidnext,
                "UIDVALIDITY": self.uidvalidity, "UNSEEN": unseen, "RECENT": recent,
                "HIGHESTMODSEQ": self.highestmodseq}


class IndexRegistry:
    """One FolderIndex per folder path for the whole process; unused ones are kept in a
    small LRU so a re-SELECT is warm."""

    def __init__(self, events=None, keep: int = 64, fsync: bool = True):
        self.events = events
        self.keep = keep
        self.fsync = fsync
        self._open: dict[str, FolderIndex] = {}
        self._idle: dict[str, FolderIndex] = {}

    def acquire(self, folder) -> FolderIndex:
        """``folder`` is a store Folder (path, address, name)."""
        k = str(folder.path)
        idx = self._open.get(k)
        if idx is None:
            idx = self._idle.pop(k, None)
            if idx is None:
                idx = FolderIndex(folder.path, self.events, folder.address, folder.name, self.fsync)
                if self.events is not None:
                    # announced changes mark the index even while no session has it open
                    idx._token = self.events.subscribe(
                        folder.address, folder.name, lambda _a, _f, what, i=idx: i.announced(what))
            self._open[k] = idx
        idx.users += 1
        return idx

    def _drop(self, idx: FolderIndex) -> None:
        token = getattr(idx, "_token", None)
        if token is not None and self.events is not None:
            self.events.unsubscribe(token)
            idx._token = None

    def peek(self, folder) -> FolderIndex | None:
        return self._open.get(str(folder.path))

    def release(self, idx: FolderIndex) -> None:
        idx.users -= 1
        if idx.users > 0:
            return
        k = str(idx.path)
        idx.save_snapshot(min_interval=30.0)  # and at shutdown (save_all)
        if self._open.get(k) is idx:
            del self._open[k]
            self._idle[k] = idx
            while len(self._idle) > self.keep:
                self._drop(self._idle.pop(next(iter(self._idle))))

    def save_all(self) -> None:
        """Snapshot every index (at shutdown, so the next start is warm)."""
        for idx in list(self._open.values()) + list(self._idle.values()):
            try:
                idx.save_snapshot()
            except Exception:
                log.failure("snapshot of {path} failed", path=str(idx.path))

    def forget(self, path) -> None:
        """A folder was deleted or renamed: drop its index."""
        k = str(path)
        old = self._idle.pop(k, None)
        if old is not None:
            self._drop(old)
        idx = self._open.pop(k, None)
        if idx is not None:
            self._drop(idx)
            idx._dirty_all = True
