"""The tmp/ file pool (store/tmppool.py): files created ahead of time, never a message lost,
never a stale file handed out, nothing left behind at shutdown."""
import os
import time

import pytest

from mailhub.store import MailStore
from mailhub.store.commit import GroupCommitter
from tests.foundation.test_store import ThreadReactor, wait


def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def store(tmp_path):
    s = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    s.create_user("alice@example.com")
    s.enable_tmp_pool()
    yield s
    s.close()


def tmp_of(store, folder="INBOX"):
    return store.folder("alice@example.com", folder).path / "tmp"


def test_pooled_file_is_used_and_published_under_a_fresh_name(store):
    tmp = tmp_of(store)
    pool = store.tmp_pool
    w0 = store.new_message("alice@example.com")  # first use of the folder: a miss
    assert pool.misses == 1 and pool.hits == 0
    w0.abort()
    assert until(lambda: pool.pooled(str(tmp)) >= 1)
    pooled_names = os.listdir(tmp)
    time.sleep(0.01)
    w = store.new_message("alice@example.com")
    assert pool.hits == 1
    pooled_name = w.tmp_path.name
    assert w.tmp_path.parent == tmp and pooled_name in pooled_names
    w.write(b"Subject: pooled\r\n\r\nbody\r\n")
    [key] = wait(store.commit([w]))
    [info] = store.folder("alice@example.com").scan()
    assert info.key == key
    assert not key.startswith(pooled_name)  # the name is taken at commit time
    assert (info.path(tmp.parent)).read_bytes() == b"Subject: pooled\r\n\r\nbody\r\n"
    assert not (tmp / pooled_name).exists()


def test_a_pooled_file_removed_behind_the_pools_back_is_not_handed_out(store):
    tmp = tmp_of(store)
    pool = store.tmp_pool
    store.new_message("alice@example.com").abort()
    assert until(lambda: pool.pooled(str(tmp)) >= 1)
    for name in os.listdir(tmp):  # e.g. the 36-hour tmp/ sweep, or an admin
        os.unlink(tmp / name)
    w = store.new_message("alice@example.com")
    assert w.tmp_path.exists()  # a fresh file, created inline
    w.write(b"x\r\n")
    wait(store.commit([w]))
    assert len(store.folder("alice@example.com").scan()) == 1


def test_folder_deleted_and_recreated_gets_no_file_of_the_old_one(store):
    store.create_folder("alice@example.com", "Work")
    tmp = tmp_of(store, "Work")
    store.new_message("alice@example.com", "Work").abort()
    assert until(lambda: store.tmp_pool.pooled(str(tmp)) >= 1)
    store.delete_folder("alice@example.com", "Work")
    assert store.tmp_pool.pooled(str(tmp)) == 0
    store.create_folder("alice@example.com", "Work")
    w = store.new_message("alice@example.com", "Work")
    w.write(b"y\r\n")
    wait(store.commit([w]))
    assert len(store.folder("alice@example.com", "Work").scan()) == 1


def test_renamed_folder_pool_is_dropped(store):
    store.create_folder("alice@example.com", "Old")
    tmp = tmp_of(store, "Old")
    store.new_message("alice@example.com", "Old").abort()
    assert until(lambda: store.tmp_pool.pooled(str(tmp)) >= 1)
    store.rename_folder("alice@example.com", "Old", "New")
    assert store.tmp_pool.pooled(str(tmp)) == 0
    assert os.listdir(tmp_of(store, "New")) == []


def test_close_removes_every_pooled_file(store):
    tmp = tmp_of(store)
    pool = store.tmp_pool
    store.new_message("alice@example.com").abort()  # the folder's pool exists from here
    # as after three misses in a row (whether a take misses depends on the worker's timing)
    with pool._lock:
        pool._pools[str(tmp)].target = 3
    store.new_message("alice@example.com").abort()  # a take marks the folder for refill,
    pool.kick()  # which happens at the group commit's end (or at once if the take emptied it)
    assert until(lambda: pool.pooled(str(tmp)) >= 2)
    assert len(os.listdir(tmp)) >= 2
    store.close()
    assert os.listdir(tmp) == []
    w = store.new_message("alice@example.com")  # after close: inline creates still work
    w.write(b"z\r\n")
    wait(store.commit([w]))
    assert os.listdir(tmp) == []


def test_idle_pools_expire(tmp_path):
    s = MailStore(tmp_path / "mail", committer=GroupCommitter(reactor=ThreadReactor()))
    s.create_user("alice@example.com")
    pool = s.enable_tmp_pool()
    pool.max_idle = 0.2
    tmp = s.folder("alice@example.com").path / "tmp"
    s.new_message("alice@example.com").abort()
    assert until(lambda: pool.pooled(str(tmp)) >= 1)
    assert until(lambda: os.listdir(tmp) == [], timeout=5)
    assert pool.pooled(str(tmp)) == 0
    s.close()


def test_commit_failure_with_a_pooled_file_leaves_nothing_visible(store):
    tmp = tmp_of(store)
    store.new_message("alice@example.com").abort()
    assert until(lambda: store.tmp_pool.pooled(str(tmp)) >= 1)
    w = store.new_message("alice@example.com")
    assert store.tmp_pool.hits == 1
    w.write(b"doomed\r\n")
    os.rename(tmp.parent / "new", tmp.parent / "new.gone")  # the rename into new/ fails
    try:
        with pytest.raises(Exception):
            wait(store.commit([w]))
    finally:
        os.rename(tmp.parent / "new.gone", tmp.parent / "new")
    assert store.folder("alice@example.com").scan() == []
    assert not w.tmp_path.exists()


def test_delete_and_rename_never_race_a_create_in_progress(store):
    """A folder deleted or renamed just as the pool thread creates a file in its tmp/:
    rmtree must not fail ("directory not empty") and no file may be left in the renamed one."""
    for i in range(40):
        store.create_folder("alice@example.com", "Busy")
        store.new_message("alice@example.com", "Busy").abort()  # a miss: a refill starts now
        if i % 2:
            store.delete_folder("alice@example.com", "Busy")
        else:
            store.rename_folder("alice@example.com", "Busy", "Moved")
            assert os.listdir(tmp_of(store, "Moved")) == []
            store.delete_folder("alice@example.com", "Moved")
    assert "Busy" not in store.list_folders("alice@example.com")
