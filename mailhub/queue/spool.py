"""Spool: the queue's files under ``<data_dir>/queue/`` (blocking calls; run them in a thread
when they fsync).

    msg/<id>         the message (CRLF), moved here from the submitter's file
    env/<id>.json    the Envelope, replaced atomically (tmp + fsync + rename + dir fsync)
    control/         requests from ``mailhub queue flush|remove`` to the running server
    pickup/          messages injected by ``mailhub queue inject`` (read by the server)
    tmp/             work files (DSNs being built)

A message is queued once its envelope exists; a message file without an envelope is
debris from a crash before the envelope was written and is removed at start-up.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mailhub.fsutil import fsync_dir, fsync_file
from mailhub.queue.envelope import Envelope




class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.msg_dir = self.root / "msg"
        self.env_dir = self.root / "env"
        self.control_dir = self.root / "control"
        self.pickup_dir = self.root / "pickup"
        self.tmp_dir = self.root / "tmp"

    def create(self) -> "Spool":
        for d in (self.msg_dir, self.env_dir, self.control_dir, self.pickup_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def message_path(self, qid: str) -> Path:
        return self.msg_dir / qid

    def envelope_path(self, qid: str) -> Path:
        return self.env_dir / f"{qid}.json"

    # -- writing ------------------------------------------------------------------------
    def take_message(self, qid: str, source: Path, sync: bool = True) -> int:
        """Move (or copy across file systems) the message into msg/; fsync it. Returns size."""
        dest = self.message_path(qid)
        try:
            os.rename(source, dest)
        except OSError as e:
            if e.errno != 18:  # EXDEV
                raise
            shutil.copyfile(source, dest)
            os.unlink(source)
        if sync:
            fsync_file(dest)
        return dest.stat().st_size

    def write_message(self, qid: str, data: bytes, sync: bool = True) -> None:
        dest = self.message_path(qid)
        with open(dest, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def write_envelope(self, env: Envelope, sync: bool = True, sync_dir: bool = True) -> None:
        path = self.envelope_path(env.id)
        tmp = self.env_dir / f".{env.id}.tmp"
        with open(tmp, "wb") as f:
            f.write(env.to_json())
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync and sync_dir:
            fsync_dir(self.env_dir)

    def sync_dirs(self) -> None:
        fsync_dir(self.msg_dir)
        fsync_dir(self.env_dir)

    def remove(self, qid: str, sync: bool = False) -> None:
        """Envelope first: without it the message is no longer queued."""
        for p in (self.envelope_path(qid), self.message_path(qid)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if sync:
            fsync_dir(self.env_dir)

    # -- reading ------------------------------------------------------------------------
    def read_envelope(self, qid: str) -> Envelope:
        return Envelope.from_json(self.envelope_path(qid).read_bytes())

    def read_message(self, qid: str) -> bytes:
        return self.message_path(qid).read_bytes()

    def scan(self) -> tuple[list[Envelope], list[str]]:
        """All queued envelopes (sorted by id), and the names of unreadable ones."""
        envs, bad = [], []
        for p in sorted(self.env_dir.glob("*.json")):
            try:
                env = Envelope.from_json(p.read_bytes())
            except (ValueError, TypeError, KeyError, OSError):
                bad.append(p.name)
                continue
            if not self.message_path(env.id).exists():
                bad.append(p.name)
                continue
            envs.append(env)
        return envs, bad

    def clean_debris(self) -> int:
        """Remove message files without an envelope and stale tmp files; return the count."""
        n = 0
        queued = {p.name[:-5] for p in self.env_dir.glob("*.json")}
        for p in self.msg_dir.iterdir():
            if p.name not in queued:
                p.unlink(missing_ok=True)
                n += 1
        for p in list(self.env_dir.glob(".*.tmp")) + list(self.tmp_dir.iterdir()):
            p.unlink(missing_ok=True)
        return n
