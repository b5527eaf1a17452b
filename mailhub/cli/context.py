"""What CLI commands share: the configuration, the directory and the store of a data dir."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailhub.config import Config, load
from mailhub.directory import open_directory
from mailhub.directory.sqlite import SQLiteDirectory
from mailhub.ownership import give_to_data_dir_owner
from mailhub.store import MailStore


@dataclass
class CLIContext:
    cfg: Config
    directory: SQLiteDirectory
    store: MailStore

    def fix_ownership(self, path: Path, recursive: bool = True) -> None:
        """Run as root on a data dir owned by the mailhub user: give new files to that user,
        so the daemon (after --uid) can write them."""
        give_to_data_dir_owner(self.cfg.data_dir, path, recursive=recursive)


def open_context(args) -> CLIContext:
    cfg = load(args.config)
    directory = open_directory(cfg.data_dir)
    store = MailStore(cfg.data_dir / "mail")
    ctx = CLIContext(cfg, directory, store)
    for p in directory.path.parent.glob(directory.path.name + "*"):
        ctx.fix_ownership(p)
    return ctx
