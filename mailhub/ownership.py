"""Ownership of files created by root in a data dir that belongs to the mail user.

When the daemon starts as root (to bind ports below 1024, then twistd --uid drops to the
mail user) or an administrator runs the CLI as root, every file or directory they create
under the data dir is given to the data dir's owner, so the unprivileged daemon can use it.
"""
from __future__ import annotations

import os
from pathlib import Path


def give_to_data_dir_owner(data_dir: Path, *paths: Path, recursive: bool = True) -> None:
    """chown each path (recursively for directories, unless not ``recursive``) to data_dir's
    owner, if we are root and the data dir belongs to someone else; a no-op otherwise."""
    if os.geteuid() != 0:
        return
    st = Path(data_dir).stat()
    if st.st_uid == 0:
        return
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        if not path.is_dir() or not recursive:
            _chown(path, st.st_uid, st.st_gid)
            continue
        for root, dirs, files in os.walk(path):
            for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                _chown(n, st.st_uid, st.st_gid)


def _chown(path, uid: int, gid: int) -> None:
    try:
        st = os.lstat(path)
        if st.st_uid != uid or st.st_gid != gid:
            os.lchown(path, uid, gid)
    except FileNotFoundError:
        pass
