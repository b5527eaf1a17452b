"""The directory of domains, users and aliases (interface + SQLite backend)."""
from mailhub.directory.interfaces import IDirectory, DirectoryError
from mailhub.directory.sqlite import SQLiteDirectory

__all__ = ["IDirectory", "DirectoryError", "SQLiteDirectory", "open_directory"]


def open_directory(data_dir) -> SQLiteDirectory:
    """The directory of a data dir (the embedded SQLite backend)."""
    from pathlib import Path

    return SQLiteDirectory(Path(data_dir) / "directory.sqlite3")
