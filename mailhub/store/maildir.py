"""MailStore: one Maildir++ tree per user, the only code that reads or writes mail files.

Layout under ``<data_dir>/mail/<domain>/<local>/``: INBOX is the tree's root (cur/ new/ tmp/),
every other folder a ``.Name`` directory (Maildir++, "." is the hierarchy delimiter, names in
modified UTF-7 on disk, as Dovecot does, so the same tree can be served by either). Messages
are stored with CRLF line ends, so the file size is the RFC 822 size and POP3/IMAP stream the
file as it is; the file name carries it as ``,S=<size>``. Flags live in the name's ``:2,``
info (D F P R S T, and a-z for keywords mapped per folder in ``mailhub-keywords``).

Writing: MessageWriter fills a tmp/ file (in the server, one created ahead of time by the
TmpPool's thread when there is one); ``commit`` hands it to the GroupCommitter which fsyncs
it, renames it into new/ (or cur/ when flags are given) under a unique name taken at commit
time, and fsyncs the directory. A crash before the rename leaves only a tmp/ file that
nobody reads (swept after 36 h).
"""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import twisted.mail.imap4  # noqa: F401  registers the "imap4-utf-7" codec
from twisted.internet import defer
from zope.interface import implementer

from mailhub.directory.addresses import normalize_address
from mailhub.store.commit import GroupCommitter
from mailhub.store.events import MailboxEvents
from mailhub.store.interfaces import FolderError, IMailStore, StoreError
from mailhub.store.tmppool import TmpPool

SPECIAL_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
DELIMITER = "."
MAILDIR_FLAGS = "DFPRST"  # Draft Flagged Passed Replied Seen Trashed
TMP_MAX_AGE = 36 * 3600

_seq = itertools.count()
_host = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
_pid = os.getpid()


def unique_name(size: int | None = None) -> str:
    """A Maildir unique name: time.M<usec>P<pid>Q<seq>.<host>[,S=size]."""
    global _pid
    if os.getpid() != _pid:  # forked (tests, twistd daemonising)
        _pid = os.getpid()
    now = time.time()
    name = f"{int(now)}.M{int((now % 1) * 1e6)}P{_pid}Q{next(_seq)}.{_host}"
    if size is not None:
        name += f",S={size}"
    return name


def split_filename(filename: str) -> tuple[str, str]:
    """(key, flags) of a Maildir file name; key is the name before ':2,'."""
    key, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return key, info[2:]
    return key, ""


def size_from_key(key: str) -> int | None:
    for part in key.split(",")[1:]:
        if part.startswith("S="):
            try:
                return int(part[2:])
            except ValueError:
                return None
    return None


@dataclass
class MessageInfo:
    """One message of a folder as the file system shows it."""

    key: str        # unique part of the file name, stable while the message exists (POP3 UIDL)
    subdir: str     # "new" or "cur"
    filename: str   # full file name including :2,flags
    flags: str      # maildir flag letters, sorted

    def path(self, folder_path: Path) -> Path:
        return folder_path / self.subdir / self.filename

    @property
    def size(self) -> int | None:
        return size_from_key(self.key)


class MessageWriter:
    """A message being written to a folder's tmp/. Call write() then MailStore.commit()."""

    def __init__(self, folder: "Folder", flags: str = "", mtime: float | None = None):
        self.folder = folder
        self.flags = "".join(sorted(set(flags)))
        self.mtime = mtime
        self._final_name: str | None = None
        self.published = False
        tmp_dir = folder.path / "tmp"
        pool = folder.store.tmp_pool
        pooled = pool.take(str(tmp_dir)) if pool is not None else None
        if pooled is not None:  # created ahead of time by the pool's thread
            self._tmpname, self.file = pooled
            self.tmp_path = tmp_dir / self._tmpname
        else:
            self._tmpname = unique_name()
            self.tmp_path = tmp_dir / self._tmpname
            try:
                self.file = open(self.tmp_path, "xb", buffering=65536)
            except OSError as e:
                raise StoreError(f"cannot create message file: {e.strerror}") from e
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.abort()
            raise StoreError(f"cannot write message: {e.strerror}") from e
        self.size += len(data)

    def abort(self) -> None:
        """Forget an unpublished message (its tmp/ file is removed); no-op once published."""
        if self.published:
            return
        try:
            if not self.file.closed:
                self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp_path)
        except OSError:
            pass

    def final_path(self) -> Path:
        """Where the commit puts the file. Its unique name is taken when first asked (at
        commit), not from the tmp/ name: a pooled tmp/ file may have been created a while
        before the message, and the name's time should be the delivery's."""
        if self._final_name is None:
            self._final_name = unique_name()
        key = f"{self._final_name},S={self.size}"
        if self.flags:
            return self.folder.path / "cur" / f"{key}:2,{self.flags}"
        return self.folder.path / "new" / key


class Folder:
    """One Maildir folder of a user."""

    def __init__(self, store: "MailStore", address: str, name: str, path: Path):
        self.store = store
        self.address = address
        self.name = name
        self.path = path

    def __repr__(self) -> str:
        return f"<Folder {self.address} {self.name!r}>"

    def scan(self) -> list[MessageInfo]:
        """Every message in new/ and cur/, oldest first (by file name)."""
        out: list[MessageInfo] = []
        for sub in ("new", "cur"):
            try:
                names = os.listdir(self.path / sub)
            except FileNotFoundError:
                continue
            for fn in names:
                if fn.startswith("."):
                    continue
                key, flags = split_filename(fn)
                out.append(MessageInfo(key, sub, fn, flags))
        out.sort(key=lambda m: _sort_key(m.key))
        return out

    def find(self, key: str) -> MessageInfo | None:
        """The current file of a message by key (its flags may have renamed it)."""
        for sub in ("cur", "new"):
            d = self.path / sub
            if sub == "new" and (d / key).exists():
                return MessageInfo(key, "new", key, "")
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.name.startswith(key) and split_filename(e.name)[0] == key:
                            k, flags = split_filename(e.name)
                            return MessageInfo(k, sub, e.name, flags)
            except FileNotFoundError:
                continue
        return None

    def open(self, info: MessageInfo):
        """Binary file object of the message, or None if it was expunged meanwhile."""
        try:
            return open(info.path(self.path), "rb")
        except FileNotFoundError:
            found = self.find(info.key)
            if found is None:
                return None
            info.subdir, info.filename, info.flags = found.subdir, found.filename, found.flags
            try:
                return open(info.path(self.path), "rb")
            except FileNotFoundError:
                return None

    def set_flags(self, info: MessageInfo, flags: str) -> MessageInfo | None:
        """Rename the message into cur/ with these flags; None if it is gone."""
        flags = "".join(sorted(set(flags)))
        new_name = f"{info.key}:2,{flags}"
        if info.subdir == "cur" and info.filename == new_name:
            return info
        src = info.path(self.path)
        dst = self.path / "cur" / new_name
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            found = self.find(info.key)
            if found is None:
                return None
            os.rename(found.path(self.path), dst)
        except OSError as e:
            raise StoreError(f"cannot change flags: {e.strerror}") from e
        info.subdir, info.filename, info.flags = "cur", new_name, flags
        self.store.events.notify(self.address, self.name, "flags")
        return info

    def remove(self, info: MessageInfo, notify: bool = True) -> bool:
        """Delete a message (expunge / POP3 DELE at QUIT). False if it was already gone."""
        try:
            os.unlink(info.path(self.path))
        except FileNotFoundError:
            found = self.find(info.key)
            if found is None:
                return False
            os.unlink(found.path(self.path))
        if notify:
            self.store.events.notify(self.address, self.name, "expunge")
        return True

    def copy_message(self, info: MessageInfo, target: "Folder", flags: str | None = None) -> str:
        """Copy (hard link when possible) a message into another folder; returns its new key."""
        src = info.path(self.path)
        if not src.exists():
            found = self.find(info.key)
            if found is None:
                raise FolderError("message no longer exists")
            src = found.path(self.path)
        size = info.size if info.size is not None else src.stat().st_size
        key = unique_name(size)
        fl = "".join(sorted(set(info.flags if flags is None else flags)))
        dst = target.path / "cur" / f"{key}:2,{fl}"
        try:
            os.link(src, dst)
        except OSError:
            tmp = target.path / "tmp" / key
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.rename(tmp, dst)
        self.store.events.notify(target.address, target.name, "exists")
        return key


def _sort_key(key: str) -> tuple:
    # "<secs>.M<usec>P<pid>Q<seq>.host" sorts by time then sequence; foreign names by text
    head = key.split(".", 2)
    try:
        secs = int(head[0])
    except ValueError:
        return (0, 0, key)
    usec = 0
    if len(head) > 1 and head[1].startswith("M"):
        digits = head[1][1:].split("P", 1)[0]
        usec = int(digits) if digits.isdigit() else 0
    return (secs, usec, key)


def _check_folder_name(name: str) -> str:
    if not isinstance(name, str) or not name or name != name.strip():
        raise FolderError(f"invalid folder name {name!r}")
    if name.upper() == "INBOX":
        return "INBOX"
    if any(c in name for c in "/\\\x00\r\n") or any(ord(c) < 0x20 for c in name):
        raise FolderError(f"invalid folder name {name!r}")
    parts = name.split(DELIMITER)
    if any(p in ("", "..") or p.startswith("~") for p in parts):
        raise FolderError(f"invalid folder name {name!r}")
    if parts[0].upper() == "INBOX" and len(parts) > 1:
        parts[0] = "INBOX"
    return DELIMITER.join(parts)


@implementer(IMailStore)
class MailStore:
    """Maildir++ trees under ``root``; see the module docstring."""

    def __init__(self, root: str | Path, events: MailboxEvents | None = None,
                 committer: GroupCommitter | None = None, fsync: bool = True):
        self.root = Path(root)
        self.events = events or MailboxEvents()
        self.committer = committer or GroupCommitter(fsync=fsync)
        self.tmp_pool: TmpPool | None = None  # the server turns it on (enable_tmp_pool)

    def enable_tmp_pool(self) -> TmpPool:
        """Create tmp/ files ahead of time in a worker thread (see store/tmppool.py); the
        server does this, one-shot tools (CLI, scripts) do not need it."""
        if self.tmp_pool is None:
            self.tmp_pool = TmpPool(unique_name)
            self.committer.after_batch.append(self.tmp_pool.kick)
        return self.tmp_pool

    def close(self) -> None:
        """Remove pooled tmp/ files (server shutdown)."""
        if self.tmp_pool is not None:
            self.tmp_pool.stop()

    # -- users -------------------------------------------------------------------------------
    def user_dir(self, address: str) -> Path:
        addr = normalize_address(address)
        local, _, domain = addr.rpartition("@")
        return self.root / domain / local

    def has_user(self, address: str) -> bool:
        return (self.user_dir(address) / "cur").is_dir()

    def create_user(self, address: str) -> Path:
        base = self.user_dir(address)
        _make_maildir(base)
        subs = []
        for name in SPECIAL_FOLDERS:
            _make_maildir(base / ("." + name))
            subs.append(name)
        sub_file = base / "subscriptions"
        if not sub_file.exists():
            _write_atomic(sub_file, "".join(f"{s}\n" for s in ["INBOX"] + subs))
        return base

    def remove_user(self, address: str, purge: bool = False) -> Path | None:
        """Purge deletes the tree; otherwise it is renamed aside so a new user of the same
        address does not inherit it. Returns where the mail now is (None when purged)."""
        base = self.user_dir(address)
        if not base.exists():
            return None
        self._forget_pools(base)
        if purge:
            shutil.rmtree(base)
            return None
        aside = base.with_name(f"{base.name}.removed-{int(time.time())}")
        os.rename(base, aside)
        return aside

    # -- folders -----------------------------------------------------------------------------
    def _folder_path(self, address: str, name: str) -> Path:
        name = _check_folder_name(name)
        base = self.user_dir(address)
        if name == "INBOX":
            return base
        return base / ("." + name.encode("imap4-utf-7").decode("ascii"))

    def list_folders(self, address: str) -> list[str]:
        base = self.user_dir(address)
        if not base.is_dir():
            return []
        names = []
        for entry in os.scandir(base):
            if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir():
                if (Path(entry.path) / "cur").is_dir():
                    try:
                        names.append(entry.name[1:].encode("ascii").decode("imap4-utf-7"))
                    except (UnicodeError, ValueError):
                        continue
        return ["INBOX"] + sorted(names)

    def folder(self, address: str, name: str = "INBOX") -> Folder:
        canonical = _check_folder_name(name)
        path = self._folder_path(address, canonical)
        if not (path / "cur").is_dir():
            raise FolderError(f"no such folder: {name}")
        return Folder(self, normalize_address(address), canonical, path)

    def special_use(self, address: str) -> dict[str, str]:
        """Folder name -> special-use attribute for folders that exist."""
        folders = set(self.list_folders(address))
        return {n: a for n, a in SPECIAL_FOLDERS.items() if n in folders}

    def create_folder(self, address: str, name: str) -> Folder:
        canonical = _check_folder_name(name)
        if canonical == "INBOX":
            raise FolderError("INBOX already exists")
        parts = canonical.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent != "INBOX":
                _make_maildir(self._folder_path(address, parent))
        path = self._folder_path(address, canonical)
        if path.exists():
            raise FolderError(f"folder {name} already exists")
        _make_maildir(path)
        return Folder(self, normalize_address(address), canonical, path)

    def delete_folder(self, address: str, name: str) -> None:
        canonical = _check_folder_name(name)
        if canonical == "INBOX":
            raise FolderError("INBOX cannot be deleted")
        path = self._folder_path(address, canonical)
        if not path.is_dir():
            raise FolderError(f"no such folder: {name}")
        self._forget_pools(path)
        shutil.rmtree(path)
        self.events.notify(normalize_address(address), canonical, "deleted")

    def rename_folder(self, address: str, old: str, new: str) -> None:
        old_c, new_c = _check_folder_name(old), _check_folder_name(new)
        if new_c == "INBOX":
            raise FolderError("cannot rename a folder to INBOX")
        if new_c == old_c or new_c.startswith(old_c + DELIMITER):
            raise FolderError("cannot rename a folder into itself")
        src, dst = self._folder_path(address, old_c), self._folder_path(address, new_c)
        if not (src / "cur").is_dir():
            raise FolderError(f"no such folder: {old}")
        if dst.exists():
            raise FolderError(f"folder {new} already exists")
        if old_c == "INBOX":
            # RFC 3501: move INBOX's messages to the new folder, INBOX stays, empty
            target = self.create_folder(address, new_c)
            inbox = self.folder(address, "INBOX")
            for info in inbox.scan():
                os.rename(info.path(inbox.path), target.path / "cur" / info.filename
                          if info.subdir == "cur" else target.path / "new" / info.filename)
            self.events.notify(inbox.address, "INBOX", "expunge")
            return
        base = self.user_dir(address)
        prefix = src.name + "."
        children = [e.name for e in os.scandir(base) if e.name.startswith(prefix)]
        parts = new_c.split(DELIMITER)
        for i in range(1, len(parts)):
            _make_maildir(self._folder_path(address, DELIMITER.join(parts[:i])))
        self._forget_pools(src)
        for child in children:
            self._forget_pools(base / child)
        os.rename(src, dst)
        for child in children:
            os.rename(base / child, base / (dst.name + child[len(src.name):]))
        self.events.notify(normalize_address(address), old_c, "deleted")

    def _forget_pools(self, path: Path) -> None:
        if self.tmp_pool is not None:
            self.tmp_pool.forget(str(path))

    # subscriptions (Dovecot-compatible "subscriptions" file, one name per line)
    def subscriptions(self, address: str) -> list[str]:
        try:
            text = (self.user_dir(address) / "subscriptions").read_text("utf-8")
        except FileNotFoundError:
            return []
        return [l for l in text.splitlines() if l]

    def set_subscribed(self, address: str, name: str, subscribed: bool) -> None:
        canonical = _check_folder_name(name)
        subs = self.subscriptions(address)
        if subscribed and canonical not in subs:
            subs.append(canonical)
        elif not subscribed:
            subs = [s for s in subs if s != canonical]
        _write_atomic(self.user_dir(address) / "subscriptions", "".join(f"{s}\n" for s in subs))

    # -- writing -----------------------------------------------------------------------------
    def new_message(self, address: str, folder: str = "INBOX", flags: str = "",
                    mtime: float | None = None) -> MessageWriter:
        return MessageWriter(self.folder(address, folder), flags=flags, mtime=mtime)

    def commit(self, writers: list[MessageWriter]) -> defer.Deferred:
        """Publish writers durably (group commit); fires with their message keys."""
        items = []
        for w in writers:
            try:
                w.file.flush()
            except OSError as e:
                for x in writers:
                    x.abort()
                return defer.fail(StoreError(f"cannot write message: {e.strerror}"))
            if w.mtime is not None:
                os.utime(w.tmp_path, (w.mtime, w.mtime))
            items.append((w.file, str(w.tmp_path), str(w.final_path())))
        d = self.committer.submit(items)

        def published(paths):
            seen = set()
            for w in writers:
                w.published = True
                k = (w.folder.address, w.folder.name)
                if k not in seen:
                    seen.add(k)
                    self.events.notify(k[0], k[1], "exists")
            return [split_filename(os.path.basename(p))[0] for p in paths]

        return d.addCallback(published)

    def deliver_bytes(self, address: str, data: bytes, folder: str = "INBOX", flags: str = "",
                      mtime: float | None = None) -> defer.Deferred:
        """Store a whole message given as bytes (APPEND, bounces); fires with its key."""
        try:
            w = self.new_message(address, folder, flags=flags, mtime=mtime)
            w.write(data)
        except StoreError as e:
            return defer.fail(e)
        return self.commit([w]).addCallback(lambda keys: keys[0])

    def sweep_tmp(self, address: str) -> int:
        """Remove tmp/ files older than 36 hours in all of a user's folders."""
        removed = 0
        cutoff = time.time() - TMP_MAX_AGE
        for name in self.list_folders(address):
            tmp = self._folder_path(address, name) / "tmp"
            for e in os.scandir(tmp):
                try:
                    if e.stat().st_mtime < cutoff:
                        os.unlink(e.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _make_maildir(path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    marker = path / "maildirfolder"
    if path.name.startswith(".") and not marker.exists():
        marker.touch()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
