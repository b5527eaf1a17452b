"""The Maildir store: layout, the durable write path, crash safety, folders, flags."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mailhub.store import FolderError, MailStore, StoreError
from mailhub.store.commit import GroupCommitter
from tests.conftest import subprocess_env


class ThreadReactor:
    """Runs callFromThread callbacks at once in the calling (worker) thread."""

    def callFromThread(self, f, *args):
        f(*args)


def wait(d, timeout=10):
    done = threading.Event()
    out = {}
    d.addBoth(lambda r: (out.setdefault("r", r), done.set()))
    assert done.wait(timeout), "deferred did not fire"
    r = out["r"]
    if hasattr(r, "raiseException"):
        r.raiseException()
    return r


@pytest.fixture
def store(tmp_path):
    s = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    s.create_user("alice@example.com")
    return s


def test_layout(store, tmp_path):
    base = tmp_path / "mail" / "example.com" / "alice"
    assert store.user_dir("Alice@EXAMPLE.com") == base
    assert store.list_folders("alice@example.com") == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    assert store.special_use("alice@example.com")["Sent"] == "\\Sent"
    assert (base / ".Sent" / "maildirfolder").exists()
    assert "Sent" in store.subscriptions("alice@example.com")


def test_write_path_tmp_fsync_rename(store, tmp_path):
    events = []
    store.events.subscribe("alice@example.com", "INBOX", lambda a, f, w: events.append((a, f, w)))
    w = store.new_message("alice@example.com")
    w.write(b"Subject: hi\r\n\r\nbody\r\n")
    inbox = store.folder("alice@example.com")
    # before commit: only in tmp/, invisible to readers
    assert inbox.scan() == []
    assert len(os.listdir(inbox.path / "tmp")) == 1
    keys = wait(store.commit([w]))
    assert len(keys) == 1 and keys[0].endswith(",S=%d" % len(b"Subject: hi\r\n\r\nbody\r\n"))
    msgs = inbox.scan()
    assert [m.key for m in msgs] == keys and msgs[0].subdir == "new"
    assert os.listdir(inbox.path / "tmp") == []
    with inbox.open(msgs[0]) as f:
        assert f.read() == b"Subject: hi\r\n\r\nbody\r\n"
    assert events == [("alice@example.com", "INBOX", "exists")]


def test_group_commit_batches_concurrent_writers(tmp_path):
    store = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    store.create_user("alice@example.com")
    ds = []
    # 50 sessions finishing DATA while the commit thread is busy (its lock held here, as
    # a running fsync round would hold it up): all their requests must share one round
    with store.committer._cond:
        for i in range(50):
            w = store.new_message("alice@example.com")
            w.write(b"Subject: %d\r\n\r\nx\r\n" % i)
            ds.append(store.commit([w]))
    for d in ds:
        wait(d)
    assert len(store.folder("alice@example.com").scan()) == 50
    assert store.committer.committed == 50
    assert store.committer.batches == 1


def test_failed_commit_leaves_nothing_visible(store):
    inbox = store.folder("alice@example.com")
    w1 = store.new_message("alice@example.com")
    w1.write(b"one\r\n")
    w2 = store.new_message("alice@example.com")
    w2.write(b"two\r\n")
    os.unlink(w2.tmp_path)  # the second file vanishes: its rename will fail
    with pytest.raises(StoreError):
        wait(store.commit([w1, w2]))
    assert inbox.scan() == []
    assert os.listdir(inbox.path / "tmp") == []


def test_crash_between_write_and_rename_leaves_nothing_visible(tmp_path):
    """A writer killed (SIGKILL) before commit leaves only a tmp/ file nobody reads."""
    store = MailStore(tmp_path / "mail")
    store.create_user("alice@example.com")
    code = (
        "import os, sys, time\n"
        "from mailhub.store import MailStore\n"
        "s = MailStore(sys.argv[1])\n"
        "w = s.new_message('alice@example.com')\n"
        "w.write(b'Subject: half\\r\\n\\r\\n' + b'x' * 100000)\n"
        "w.file.flush()\n"
        "print('written', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "mail")],
                         stdout=subprocess.PIPE, env=subprocess_env())
    assert p.stdout.readline().strip() == b"written"
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    inbox = store.folder("alice@example.com")
    assert inbox.scan() == []
    assert len(os.listdir(inbox.path / "tmp")) == 1
    # the sweep removes such leftovers once they are old
    old = time.time() - 40 * 3600
    for n in os.listdir(inbox.path / "tmp"):
        os.utime(inbox.path / "tmp" / n, (old, old))
    assert store.sweep_tmp("alice@example.com") == 1


def test_flags_rename_into_cur_and_key_is_stable(store):
    key = wait(store.deliver_bytes("alice@example.com", b"Subject: x\r\n\r\n"))
    inbox = store.folder("alice@example.com")
    (info,) = inbox.scan()
    assert info.key == key
    inbox.set_flags(info, "SF")
    (again,) = inbox.scan()
    assert again.key == key and again.subdir == "cur" and again.filename == f"{key}:2,FS"
    assert again.flags == "FS"
    assert inbox.remove(again) is True
    assert inbox.remove(again) is False
    assert inbox.scan() == []


def test_folders_and_traversal(store):
    a = "alice@example.com"
    store.create_folder(a, "Projects.2026")
    assert "Projects" in store.list_folders(a) and "Projects.2026" in store.list_folders(a)
    store.create_folder(a, "Entwürfe")
    assert "Entwürfe" in store.list_folders(a)
    assert (store.user_dir(a) / ".Entw&APw-rfe").is_dir()  # modified UTF-7 on disk, as Dovecot
    with pytest.raises(FolderError):
        store.create_folder(a, "Projects")
    for bad in ("../bob", "a/b", "..", "", ".hidden", "a..b", "a\x00b", "trailing."):
        with pytest.raises(FolderError):
            store.create_folder(a, bad)
    store.rename_folder(a, "Projects", "Work")
    assert "Work.2026" in store.list_folders(a) and "Projects" not in store.list_folders(a)
    store.delete_folder(a, "Work.2026")
    assert "Work.2026" not in store.list_folders(a)
    with pytest.raises(FolderError):
        store.delete_folder(a, "INBOX")
    with pytest.raises(FolderError):
        store.folder(a, "Nope")
    assert store.folder(a, "inbox").name == "INBOX"


def test_rename_inbox_moves_messages(store):
    a = "alice@example.com"
    wait(store.deliver_bytes(a, b"Subject: 1\r\n\r\n"))
    wait(store.deliver_bytes(a, b"Subject: 2\r\n\r\n", flags="S"))
    store.rename_folder(a, "INBOX", "Old")
    assert store.folder(a, "INBOX").scan() == []
    assert len(store.folder(a, "Old").scan()) == 2


def test_copy_message(store):
    a = "alice@example.com"
    wait(store.deliver_bytes(a, b"Subject: c\r\n\r\nbody\r\n", flags="S"))
    inbox = store.folder(a)
    (info,) = inbox.scan()
    new_key = inbox.copy_message(info, store.folder(a, "Archive"))
    (copied,) = store.folder(a, "Archive").scan()
    assert copied.key == new_key and copied.flags == "S"
    with store.folder(a, "Archive").open(copied) as f:
        assert f.read() == b"Subject: c\r\n\r\nbody\r\n"


def test_mda_delivers_with_trace_headers(tmp_path):
    from mailhub.mda import DeliveryAgent

    store = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    store.create_user("alice@example.com")
    store.create_user("bob@example.com")
    mda = DeliveryAgent(store)
    src = tmp_path / "spool"
    src.write_bytes(b"Subject: s\r\n\r\nhello\r\n")
    res = wait(mda.deliver("x@remote.org", ["alice@example.com", "bob@example.com"], str(src),
                           prefix=b"Received: from test\r\n"))
    assert [r[0] for r in res] == ["alice@example.com", "bob@example.com"]
    for addr in ("alice@example.com", "bob@example.com"):
        f = store.folder(addr)
        (m,) = f.scan()
        with f.open(m) as fh:
            data = fh.read()
        assert data == (b"Return-Path: <x@remote.org>\r\nDelivered-To: " + addr.encode() +
                        b"\r\nReceived: from test\r\nSubject: s\r\n\r\nhello\r\n")
        assert m.size == len(data)


def test_mda_store_error_delivers_nothing(tmp_path):
    from mailhub.mda import DeliveryAgent

    store = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    store.create_user("alice@example.com")
    mda = DeliveryAgent(store)
    with pytest.raises(StoreError):
        wait(mda.deliver("x@remote.org", ["alice@example.com", "ghost@example.com"], b"Subject: s\r\n\r\n"))
    assert store.folder("alice@example.com").scan() == []
    assert os.listdir(store.folder("alice@example.com").path / "tmp") == []
