"""What CLI commands share: the configuration, the directory and the store of a data dir."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mailhub.config import Config, load
from mailhub.directory import open_directory
from mailhub.directory.sqlite import SQLiteDirectory
from mailhub.store import MailStore


@dataclass
class CLIContext:
    cfg: Config
    directory: SQLiteDirectory
    store: MailStore

    def fix_ownership(self, path: Path) -> None:
        """Run as root on a data dir owned by the mailhub user: give new files to that user,
        so the daemon (after --uid) can write them."""
        if os.geteuid() != 0:
            return
        st = self.cfg.data_dir.stat()
        if st.st_uid == 0 or not path.exists():
            return
        if not path.is_dir():
            os.lchown(path, st.st_uid, st.st_gid)
            return
        for root, dirs, files in os.walk(path):
            for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.lchown(n, st.st_uid, st.st_gid)


def open_context(args) -> CLIContext:
    cfg = load(args.config)
    directory = open_directory(cfg.data_dir)
    store = MailStore(cfg.data_dir / "mail")
    ctx = CLIContext(cfg, directory, store)
    for p in directory.path.parent.glob(directory.path.name + "*"):
        ctx.fix_ownership(p)
    return ctx
