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

``sync()`` brings the index up to date with the directories: it is cheap when nothing changed
(two ``stat`` calls), scans only ``new/`` after a delivery notice, and rescans both
directories when their mtimes moved or an in-process change was announced by MailboxEvents.
``IndexRegistry`` shares one FolderIndex per folder between all sessions of the process.
"""
from __future__ import annotations

import bisect
import os
import time
from array import array
from pathlib import Path

from twisted.logger import Logger

from mailhub.store.maildir import MAILDIR_FLAGS, _sort_key, split_filename, unique_name

log = Logger(namespace="mailhub.store.index")

UIDLIST = "mailhub-uidlist"
KEYWORDS = "mailhub-keywords"
SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {v.lower(): k for k, v in SYSTEM_FLAGS.items()}
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
CHANGELOG_MAX = 20000


class IndexError_(Exception):
    pass


class FolderIndex:
    def __init__(self, path: str | Path, events=None, address: str = "", name: str = "INBOX",
                 fsync: bool = True):
        self.path = Path(path)
        self.events = events
        self.address = address
        self.name = name
        self.fsync = fsync
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1
        self.uids = array("I")
        self.keys: list[str] = []
        self.files: list[str] = []      # "new/<name>" or "cur/<name>"
        self.flags: list[str] = []      # sorted maildir letters incl. keyword letters
        self.modseqs = array("Q")
        self.key_uid: dict[str, int] = {}
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
        self._known: dict | None = None
        self.users = 0
        self._load()

    # -- persistence -----------------------------------------------------------------------
    def _load(self) -> None:
        self._load_keywords()
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
            self.uidvalidity = max(int(time.time()), self.uidvalidity + 1)
            self.uidnext = 1
            self.highestmodseq = 1
            self.uids, self.keys, self.files, self.flags = array("I"), [], [], []
            self.modseqs, self.key_uid = array("Q"), {}
            self._known = {}
            self._write_snapshot_entries([])
        self.recent_floor = self.uidnext
        self.changes_floor = self.highestmodseq

    def _parse(self, data: bytes) -> bool:
        lines = data.split(b"\n")
        if data[-1:] != b"\n":
            lines = lines[:-1]  # torn last record
        else:
            lines = lines[:-1]
        if not lines:
            return False
        head = lines[0].split()
        try:
            if head[0] != b"mailhub-uidlist" or head[1] != b"1":
                return False
            self.uidvalidity = int(head[2])
            self.uidnext = int(head[3])
            self.highestmodseq = int(head[4])
        except (IndexError, ValueError):
            return False
        entries: dict[int, list] = {}
        records = 0
        for line in lines[1:]:
            if not line:
                continue
            try:
                c = line[0]
                if c == 0x3D:  # "=" modseq change
                    u, m = line[1:].split(b" ")
                    e = entries.get(int(u))
                    if e is not None:
                        e[1] = int(m)
                    self.highestmodseq = max(self.highestmodseq, int(m))
                    records += 1
                elif c == 0x2D:  # "-" expunge
                    u, m = line[1:].split(b" ")
                    entries.pop(int(u), None)
                    self.highestmodseq = max(self.highestmodseq, int(m))
                    self.expunged.append((int(m), int(u)))
                    records += 1
                else:
                    plus = c == 0x2B
                    u, m, k = (line[1:] if plus else line).split(b" ", 2)
                    uid = int(u)
                    entries[uid] = [k.decode("utf-8", "surrogateescape"), int(m)]
                    self.uidnext = max(self.uidnext, uid + 1)
                    self.highestmodseq = max(self.highestmodseq, int(m))
                    if plus:
                        records += 1
            except ValueError:
                continue
        self._log_records = records
        # the uid map is known; files and flags come from the directories at the first sync
        self._known = entries
        self.uids, self.keys, self.files, self.flags = array("I"), [], [], []
        self.modseqs = array("Q")
        self.key_uid = {v[0]: u for u, v in entries.items()}
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

    def _stat_mtimes(self):
        try:
            return (os.stat(self.path / "new").st_mtime_ns, os.stat(self.path / "cur").st_mtime_ns)
        except FileNotFoundError:
            return (None, None)

    def sync(self) -> None:
        mt = self._stat_mtimes()
        if mt[0] is None:
            raise FileNotFoundError(str(self.path))
        if self._dirty_all or mt[1] != self._mtimes[1] or (mt[0] != self._mtimes[0] and not self._dirty_new):
            self._full_scan(mt)
        elif self._dirty_new or mt[0] != self._mtimes[0]:
            self._scan_new(mt)

    def _listdir(self, sub: str) -> list[str]:
        try:
            return [n for n in os.listdir(self.path / sub) if n[0] != "."]
        except FileNotFoundError:
            return []

    def _full_scan(self, mt) -> None:
        self._dirty_all = self._dirty_new = False
        self._mtimes = mt
        found: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            for fn in self._listdir(sub):
                key, fl = split_filename(fn)
                if sub == "new":
                    fl = ""
                found[key] = (f"{sub}/{fn}", "".join(sorted(set(fl))) if fl else "")
        records: list[str] = []
        if self._known is not None:
            # first scan after loading the uidlist: build the arrays from the file's uid map
            known = sorted(self._known.items())
            self._known = None
            uids, keys, files, flags, modseqs = array("I"), [], [], [], array("Q")
            key_uid = {}
            for uid, (key, ms) in known:
                f = found.pop(key, None)
                if f is None:
                    self.highestmodseq += 1
                    records.append(f"-{uid} {self.highestmodseq}\n")
                    self.expunged.append((self.highestmodseq, uid))
                    continue
                uids.append(uid)
                keys.append(key)
                files.append(f[0])
                flags.append(f[1])
                modseqs.append(ms)
                key_uid[key] = uid
            self.uids, self.keys, self.files, self.flags, self.modseqs = uids, keys, files, flags, modseqs
            self.key_uid = key_uid
        else:
            gone = []
            for i, key in enumerate(self.keys):
                f = found.pop(key, None)
                if f is None:
                    gone.append(i)
                    continue
                if f[0] != self.files[i]:
                    self.files[i] = f[0]
                    if f[1] != self.flags[i]:
                        self.flags[i] = f[1]
                        self.highestmodseq += 1
                        self.modseqs[i] = self.highestmodseq
                        self.changes.append((self.highestmodseq, self.uids[i]))
                        records.append(f"={self.uids[i]} {self.highestmodseq}\n")
            if gone:
                self._remove_positions(gone, records)
        if found:
            self._add_found(found, records)
        self._append_records(records)
        self._trim_changes()

    def _scan_new(self, mt) -> None:
        self._dirty_new = False
        self._mtimes = (mt[0], self._mtimes[1])
        found = {}
        for fn in self._listdir("new"):
            key = split_filename(fn)[0]
            if key not in self.key_uid:
                found[key] = (f"new/{fn}", "")
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
        return os.path.join(self.path, self.files[i])

    def open(self, i: int):
        """The message file at position i, or None if it vanished (the index is then
        marked for a rescan)."""
        try:
            return open(os.path.join(self.path, self.files[i]), "rb")
        except FileNotFoundError:
            self._dirty_all = True
            try:
                self._full_scan(self._stat_mtimes())
            except OSError:
                return None
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
                os.rename(os.path.join(self.path, self.files[i]), os.path.join(self.path, new_file))
            except FileNotFoundError:
                self._dirty_all = True
                continue
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
                os.unlink(os.path.join(self.path, self.files[i]))
            except FileNotFoundError:
                pass
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
        src = os.path.join(self.path, self.files[i])
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
            if idx is not None:
                idx._dirty_all = True  # changes went unannounced while nobody listened
            else:
                idx = FolderIndex(folder.path, self.events, folder.address, folder.name, self.fsync)
            self._open[k] = idx
        idx.users += 1
        return idx

    def peek(self, folder) -> FolderIndex | None:
        return self._open.get(str(folder.path))

    def release(self, idx: FolderIndex) -> None:
        idx.users -= 1
        if idx.users > 0:
            return
        k = str(idx.path)
        if self._open.get(k) is idx:
            del self._open[k]
            self._idle[k] = idx
            while len(self._idle) > self.keep:
                self._idle.pop(next(iter(self._idle)))

    def forget(self, path) -> None:
        """A folder was deleted or renamed: drop its index."""
        k = str(path)
        self._idle.pop(k, None)
        idx = self._open.pop(k, None)
        if idx is not None:
            idx._dirty_all = True
