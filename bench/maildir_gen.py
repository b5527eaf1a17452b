"""Fast mailbox generation: write Maildir message files directly, identical for every server.

Messages are plain RFC 5322 texts with CRLF line ends, ~``size`` bytes each, From drawn from
a fixed set of senders (so ``SEARCH FROM`` has a known hit count), file names in mailhub's
form ``<unique>,S=<size>:2,<flags>`` under cur/ (a tenth carry \\Seen). The same bytes and
names go to every destination, so Postfix/Dovecot and mailhub serve identical trees.
"""
from __future__ import annotations

import os
from pathlib import Path

SENDERS = [f"sender{i:02d}@senders.example" for i in range(20)]
BASE_TIME = 1_700_000_000


def make_message(i: int, size: int, to: str = "user@bench.example") -> bytes:
    """Message number ``i``: headers + a body padded with text lines to ``size`` bytes."""
    sender = SENDERS[i % len(SENDERS)]
    head = (
        f"Return-Path: <{sender}>\r\n"
        f"From: Sender {i % len(SENDERS)} <{sender}>\r\n"
        f"To: <{to}>\r\n"
        f"Subject: bench message {i}\r\n"
        f"Date: Tue, 14 Nov 2023 22:13:{i % 60:02d} +0000\r\n"
        f"Message-ID: <bench.{i}@senders.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, message body text 0123456789.\r\n"
    need = max(size - len(head), len(line))
    body = line * (need // len(line)) + line[: need % len(line) - 2] + b"\r\n" if need % len(line) >= 2 \
        else line * (need // len(line))
    return head + body


def message_name(i: int, size: int, flags: str) -> str:
    return f"{BASE_TIME + i // 1000}.M{i % 1000:06d}P1Q{i}.benchhost,S={size}:2,{flags}"


def make_maildir(path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def fill(dests: list[Path], count: int, size: int, to: str = "user@bench.example",
         seen_every: int = 10, start: int = 0, owner: tuple[int, int] | None = None) -> int:
    """Write ``count`` messages into each Maildir in ``dests``; returns bytes per copy."""
    for d in dests:
        make_maildir(d)
    total = 0
    for i in range(start, start + count):
        data = make_message(i, size, to)
        flags = "S" if seen_every and i % seen_every == 0 else ""
        name = message_name(i, len(data), flags)
        for d in dests:
            p = d / "cur" / name
            with open(p, "wb") as f:
                f.write(data)
            if owner:
                os.chown(p, *owner)
        total += len(data)
    return total


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for n in files:
            os.chown(os.path.join(root, n), uid, gid)


def count_messages(maildir: Path) -> int:
    n = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(maildir / sub) as it:
                n += sum(1 for e in it if not e.name.startswith("."))
        except FileNotFoundError:
            pass
    return n


def clear(maildir: Path) -> None:
    """Remove every message file (new/ and cur/) of one Maildir, keeping the directories."""
    for sub in ("new", "cur"):
        try:
            with os.scandir(maildir / sub) as it:
                for e in it:
                    if e.is_file():
                        os.unlink(e.path)
        except FileNotFoundError:
            pass
