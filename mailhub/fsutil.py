"""Durable file-system primitives shared by the store and the queue: fsync a directory (so a
rename or unlink in it survives a crash) and fsync a file by path."""
from __future__ import annotations

import os


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
