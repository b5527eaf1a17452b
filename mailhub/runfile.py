"""The running server's listeners file, ``<data_dir>/run/listeners.json``.

The server writes ``{"pid": ..., "listeners": {name: [port, ...]}}`` once it is listening
(ports bound as ``tcp:0`` are only known then) and removes it at stop; tests, the benchmark
and tools read it with ``read_listeners``. No Twisted import here: readers are plain scripts.
"""
from __future__ import annotations

import json
from pathlib import Path


def listeners_path(data_dir) -> Path:
    """Where a running server records its bound ports."""
    return Path(data_dir) / "run" / "listeners.json"


def read_listeners(data_dir, pid: int | None) -> dict[str, list[int]] | None:
    """The ports of the server process ``pid`` ({listener: [port, ...]}), or None while it
    has not written them yet (or the file is another process's, or half-written)."""
    try:
        data = json.loads(listeners_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or pid is None or data.get("pid") != pid:
        return None
    return data.get("listeners")


__all__ = ["listeners_path", "read_listeners"]
