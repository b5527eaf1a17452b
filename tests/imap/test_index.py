"""FolderIndex (mailhub.store.index) without a server: UID assignment, persistence and
restart stability, rebuild when the uidlist is lost, flags in file names, keywords, MODSEQ."""
import os

import pytest
from twisted.internet import defer

from mailhub.store import MailStore
from mailhub.store.index import UIDLIST, FolderIndex, IndexRegistry

ADDR = "carol@example.com"


def drop(folder, name, flags=None, data=b"Subject: x\r\n\r\nbody\r\n"):
    """Write a message file the way another program would (out of process)."""
    if flags is None:
        p = folder.path / "new" / name
    else:
        p = folder.path / "cur" / f"{name}:2,{flags}"
    p.write_bytes(data)
    return p


@pytest.fixture
def store(tmp_path):
    s = MailStore(tmp_path / "mail", fsync=False)
    s.create_user(ADDR)
    return s


def test_uids_ascending_and_persistent(store):
    folder = store.folder(ADDR)
    for i in range(5):
        drop(folder, f"100{i}.M1P1Q{i}.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    assert list(idx.uids) == [1, 2, 3, 4, 5]
    validity = idx.uidvalidity
    keys = list(idx.keys)
    assert keys == sorted(keys)
    # a new message gets the next UID; a removed one's UID is never reused
    os.unlink(folder.path / "new" / keys[4])
    drop(folder, "2000.M1P1Q9.host,S=22")
    idx._dirty_all = True
    idx.sync()
    assert list(idx.uids) == [1, 2, 3, 4, 6]
    # restart: same map, same UIDVALIDITY
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()
    assert idx2.uidvalidity == validity
    assert list(idx2.uids) == [1, 2, 3, 4, 6] and idx2.uidnext == 7
    assert idx2.keys == idx.keys


def test_flags_live_in_file_names_and_survive(store):
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")
    drop(folder, "2.M1P1Q2.host,S=22", flags="S")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    assert idx.flags == ["", "S"]
    kw = idx.letters_for(["\\Flagged", "$Important", "\\Seen"])
    assert kw == "FSa"
    m0 = idx.highestmodseq
    idx.set_flags([(0, kw)])
    assert idx.highestmodseq == m0 + 1 and idx.modseqs[0] == m0 + 1
    names = sorted(os.listdir(folder.path / "cur"))
    assert names == ["1.M1P1Q1.host,S=22:2,FSa", "2.M1P1Q2.host,S=22:2,S"]
    assert (folder.path / "mailhub-keywords").read_text() == "0 $Important\n"
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()
    assert idx2.flags == ["FSa", "S"]
    assert idx2.flag_names("FSa") == ["\\Flagged", "\\Seen", "$Important"]
    assert idx2.modseqs[0] == m0 + 1
    # the store (POP3's view) sees the same flags
    infos = folder.scan()
    assert sorted(i.flags for i in infos) == ["FSa", "S"]


def test_foreign_flag_change_and_expunge_detected(store):
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")
    drop(folder, "2.M1P1Q2.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    before = idx.highestmodseq
    # another program marks one seen and deletes the other (as POP3 would)
    os.rename(folder.path / "new" / "1.M1P1Q1.host,S=22", folder.path / "cur" / "1.M1P1Q1.host,S=22:2,S")
    os.unlink(folder.path / "new" / "2.M1P1Q2.host,S=22")
    idx.invalidate("flags")
    idx.sync()
    assert list(idx.uids) == [1] and idx.flags == ["S"]
    assert idx.highestmodseq > before
    assert [u for _m, u in idx.changes] == [1]
    assert [u for _m, u in idx.expunged] == [2]


def test_lost_uidlist_rebuilds_with_new_uidvalidity(store):
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    old = idx.uidvalidity
    os.unlink(folder.path / UIDLIST)
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()
    assert idx2.uidvalidity != old
    assert list(idx2.uids) == [1]
    # a corrupt file is treated as lost
    (folder.path / UIDLIST).write_bytes(b"garbage\n")
    idx3 = FolderIndex(folder.path, fsync=False)
    idx3.sync()
    assert idx3.uidvalidity not in (old, 0) and list(idx3.uids) == [1]


def test_torn_last_record_is_ignored(store):
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    with open(folder.path / UIDLIST, "ab") as f:
        f.write(b"+7 99 half-written-k")
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()
    assert list(idx2.uids) == [1] and idx2.uidvalidity == idx.uidvalidity
    assert idx2.uidnext == 2


def test_log_compaction_keeps_state(store):
    folder = store.folder(ADDR)
    for i in range(3):
        drop(folder, f"{i}.M1P1Q{i}.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    for n in range(700):  # 1400 flag records > 2*3+1000: forces a compaction
        idx.set_flags([(n % 3, "S" if n % 2 == 0 else "")])
    size = (folder.path / UIDLIST).stat().st_size
    assert size < 20000
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()
    assert list(idx2.uids) == [1, 2, 3]
    assert list(idx2.modseqs) == list(idx.modseqs)
    assert idx2.highestmodseq == idx.highestmodseq


def test_copy_and_expunge(store):
    folder = store.folder(ADDR)
    trash = store.folder(ADDR, "Trash")
    drop(folder, "1.M1P1Q1.host,S=22", flags="F")
    src = FolderIndex(folder.path, fsync=False)
    dst = FolderIndex(trash.path, fsync=False)
    src.sync()
    dst.sync()
    uid = src.copy_to(0, dst, "FT")
    assert uid == 1 and dst.flags == ["FT"]
    assert src.expunge([0]) == [1]
    assert list(src.uids) == []
    assert os.listdir(folder.path / "cur") == []
    dst2 = FolderIndex(trash.path, fsync=False)
    dst2.sync()
    assert list(dst2.uids) == [1] and dst2.flags == ["FT"]


def test_registry_shares_and_keeps_warm(store):
    reg = IndexRegistry(store.events, keep=1, fsync=False)
    f = store.folder(ADDR)
    a = reg.acquire(f)
    b = reg.acquire(store.folder(ADDR, "inbox"))
    assert a is b and a.users == 2
    reg.release(a)
    reg.release(b)
    assert reg.acquire(f) is a


def test_delivery_through_store_is_picked_up(store):
    results = []
    d = store.deliver_bytes(ADDR, b"Subject: hi\r\n\r\nx\r\n")
    d.addBoth(results.append)
    folder = store.folder(ADDR)
    # the commit thread publishes asynchronously; wait for the file
    import time
    for _ in range(200):
        if os.listdir(folder.path / "new"):
            break
        time.sleep(0.01)
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    assert len(idx.uids) == 1 and idx.files[0].startswith("new/")


def test_header_cache_persists_and_rebuilds(tmp_path):
    from mailhub.store.cache import CACHE_FILE, HeaderCache, extract_fields
    hdr = (b"Received: from x\r\nFrom: A <a@x.org>\r\nSubject: long\r\n subject folded\r\n"
           b"X-Other: no\r\nTo: b@y.org\r\n\r\n")
    fields = extract_fields(hdr)
    assert fields == b"From: A <a@x.org>\r\nSubject: long\r\n subject folded\r\nTo: b@y.org\r\n"
    c = HeaderCache(tmp_path)
    assert c.get("k1") is None
    c.put("k1", fields)
    c.put("k2", b"Subject: two\r\n")
    c.flush()
    with open(tmp_path / CACHE_FILE, "ab") as f:
        f.write(b"k3\t100\nSubject: torn")  # crash in the middle of a record
    c2 = HeaderCache(tmp_path)
    assert c2.get("k1") == fields and c2.get("k2") == b"Subject: two\r\n" and c2.get("k3") is None
    (tmp_path / CACHE_FILE).unlink()
    c3 = HeaderCache(tmp_path)
    assert c3.get("k1") is None  # rebuilt lazily from the messages by its users


def test_header_cache_compaction(tmp_path):
    from mailhub.store.cache import CACHE_FILE, HeaderCache
    c = HeaderCache(tmp_path)
    for i in range(2000):
        c.put(f"key{i}", b"Subject: " + b"x" * 60 + b"\r\n")
    c.flush()
    big = (tmp_path / CACHE_FILE).stat().st_size
    c.flush(live_keys=["key1", "key2"])
    assert (tmp_path / CACHE_FILE).stat().st_size < big / 100
    c2 = HeaderCache(tmp_path)
    assert c2.get("key1") and c2.get("key2") and c2.get("key3") is None


def test_snapshot_makes_cold_load_cheap_and_never_stale(store):
    import time as _t
    from mailhub.store.index import SNAPSHOT
    folder = store.folder(ADDR)
    for i in range(4):
        drop(folder, f"{i}.M1P1Q{i}.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    idx.set_flags([(1, "S")])
    idx.save_snapshot()
    assert (folder.path / SNAPSHOT).exists()
    snap = FolderIndex(folder.path, fsync=False)
    assert snap._snap_stamp is not None and snap._known is None  # came from the snapshot
    snap.sync()
    assert list(snap.uids) == list(idx.uids) and snap.flags == idx.flags
    assert list(snap.modseqs) == list(idx.modseqs) and snap.uidvalidity == idx.uidvalidity
    # a change after the snapshot (a record appended) makes it stale: ignored
    idx.set_flags([(2, "F")])
    again = FolderIndex(folder.path, fsync=False)
    assert again._snap_stamp is None
    again.sync()
    assert again.flags == idx.flags
    # a foreign change to the directories after the snapshot is found by the mtime check
    idx.save_snapshot()
    _t.sleep(0.01)
    os.unlink(folder.path / "new" / "0.M1P1Q0.host,S=22")
    drop(folder, "9.M1P1Q9.host,S=22")
    later = FolderIndex(folder.path, fsync=False)
    assert later._snap_stamp is not None
    later.sync()
    assert list(later.uids) == [2, 3, 4, 5]
    # garbage in the snapshot is ignored
    (folder.path / SNAPSHOT).write_bytes(b"\x00garbage")
    g = FolderIndex(folder.path, fsync=False)
    g.sync()
    assert list(g.uids) == [2, 3, 4, 5]


def test_open_finds_a_renamed_file_and_never_shifts_positions(store):
    folder = store.folder(ADDR)
    for i in range(3):
        drop(folder, f"{i}.M1P1Q{i}.host,S=22", data=b"Subject: %d\r\n\r\nx\r\n" % i)
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    # another program renames message 2 (flags) and deletes message 1
    os.rename(folder.path / "new" / "1.M1P1Q1.host,S=22", folder.path / "cur" / "1.M1P1Q1.host,S=22:2,S")
    os.unlink(folder.path / "new" / "0.M1P1Q0.host,S=22")
    assert idx.open(0) is None
    with idx.open(1) as f:
        assert f.read().startswith(b"Subject: 1")
    assert list(idx.uids) == [1, 2, 3]  # unchanged until the next sync
    idx.sync()
    assert list(idx.uids) == [2, 3] and idx.flags[0] == "S"


def test_passed_flag_is_forwarded_keyword(store):
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22", flags="PS")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    assert idx.flag_names(idx.flags[0]) == ["$Forwarded", "\\Seen"]
    assert idx.letters_for(["$Forwarded", "\\Answered"]) == "PR"
    assert idx.keywords == []  # no keyword slot used for it


def test_snapshot_keys_and_files_are_lazy_and_exact(store):
    """The snapshot holds keys as one string and only the file names that differ from
    cur/<key>:2,<flags>; what is built from it on first use equals the live index."""
    from mailhub.store.index import SNAPSHOT
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")                # new/: an exception
    drop(folder, "2.M1P1Q2.host,S=22", flags="SF")    # unsorted letters: an exception
    drop(folder, "3.M1P1Q3.host,S=22", flags="S")
    drop(folder, "4.M1P1Q4.host,S=22", flags="")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    idx.save_snapshot()
    assert (folder.path / SNAPSHOT).exists()
    cold = FolderIndex(folder.path, fsync=False)
    assert cold._snap_stamp is not None and cold._keys is None and cold._files is None
    cold.sync()
    assert cold._keys is None  # nothing moved: a SELECT needs no per-message strings
    assert [cold.key(i) for i in range(4)] == idx.keys and cold._keys is None
    with cold.open(1) as f:  # a file path without building the lists
        assert f.read().startswith(b"Subject")
    assert cold._files is None
    assert cold.keys == idx.keys and cold.files == idx.files
    assert cold.key_uid == idx.key_uid
    # changes after a lazy load work on the built lists
    assert cold.set_flags([(0, "S")]) == [0]
    assert (folder.path / "cur" / "1.M1P1Q1.host,S=22:2,S").exists()
    removed = cold.expunge([3])
    assert removed == [4] and not (folder.path / "cur" / "4.M1P1Q4.host,S=22:2,").exists()
    fresh = FolderIndex(folder.path, fsync=False)
    fresh.sync()
    assert list(fresh.uids) == [1, 2, 3] and fresh.flags == ["S", "FS", "S"]


def test_own_append_needs_no_relisting(store, monkeypatch):
    """Files registered by add_file within own_change_begin/end need no directory listing at
    the next sync; a change by someone else in the window still triggers one."""
    folder = store.folder(ADDR)
    drop(folder, "1.M1P1Q1.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    listings = []
    real = idx._listdir
    monkeypatch.setattr(idx, "_listdir", lambda sub: listings.append(sub) or real(sub))
    token = idx.own_change_begin()
    drop(folder, "2.M1P1Q2.host,S=22", flags="S")  # what the group commit does for APPEND
    idx.announced("exists")                         # the commit's own notice
    uid = idx.add_file("2.M1P1Q2.host,S=22", "cur", "2.M1P1Q2.host,S=22:2,S")
    idx.own_change_end(token)
    idx.sync()
    assert uid == 2 and listings == [] and list(idx.uids) == [1, 2]
    # another delivery announced in the window: the index re-lists and finds it
    token = idx.own_change_begin()
    drop(folder, "3.M1P1Q3.host,S=22", flags="S")
    drop(folder, "4.M1P1Q4.host,S=22")
    idx.announced("exists")
    idx.announced("exists")
    idx.add_file("3.M1P1Q3.host,S=22", "cur", "3.M1P1Q3.host,S=22:2,S")
    idx.own_change_end(token)
    idx.sync()
    assert listings and list(idx.uids) == [1, 2, 3, 4]


def test_envelopes_persist_for_the_newest_messages(store):
    from mailhub.store.index import ENVELOPES
    folder = store.folder(ADDR)
    for i in range(3):
        drop(folder, f"{i}.M1P1Q{i}.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    idx.envelope_cache[idx.keys[2]] = b'(NIL "two" NIL NIL NIL NIL NIL NIL NIL NIL)'
    idx.envelope_cache["gone.key"] = b"(x)"  # not in the folder: not kept
    idx.save_snapshot()
    assert (folder.path / ENVELOPES).exists()
    cold = FolderIndex(folder.path, fsync=False)
    assert cold.envelope_cache == {}
    assert cold.load_envelopes() and not cold.load_envelopes()  # once
    assert cold.envelope_cache == {idx.keys[2]: b'(NIL "two" NIL NIL NIL NIL NIL NIL NIL NIL)'}
    (folder.path / ENVELOPES).write_bytes(b"garbage")
    again = FolderIndex(folder.path, fsync=False)
    assert not again.load_envelopes() and again.envelope_cache == {}


def test_empty_or_torn_snapshot_and_envelope_files_are_ignored(store):
    """The persisted files are read through mmap: an empty file (which mmap refuses) or a
    torn one is ignored like any garbage."""
    from mailhub.store.index import ENVELOPES, SNAPSHOT
    folder = store.folder(ADDR)
    for i in range(3):
        drop(folder, f"{i}.M1P1Q{i}.host,S=22")
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    idx.envelope_cache[idx.keys[2]] = b"(NIL)"
    idx.save_snapshot()
    whole_snap = (folder.path / SNAPSHOT).read_bytes()
    whole_env = (folder.path / ENVELOPES).read_bytes()
    ok = FolderIndex(folder.path, fsync=False)
    assert ok._snap_stamp is not None and ok.load_envelopes()
    assert ok.envelope_cache == {idx.keys[2]: b"(NIL)"}
    for snap, env in ((b"", b""), (whole_snap[:-5], whole_env[:-5])):
        (folder.path / SNAPSHOT).write_bytes(snap)
        (folder.path / ENVELOPES).write_bytes(env)
        bad = FolderIndex(folder.path, fsync=False)
        assert bad._snap_stamp is None
        bad.sync()
        assert list(bad.uids) == list(idx.uids) and bad.keys == idx.keys
        assert not bad.load_envelopes() and bad.envelope_cache == {}
