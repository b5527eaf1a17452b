"""RETR of a 50 MiB message streams from disk: the server's RSS must not grow by more than a
few MiB, over plain TCP and over implicit TLS, and the octets on the wire are exactly the
dot-stuffed message."""
from __future__ import annotations

import hashlib
import socket
import ssl
import time

import pytest

from mailhub.pop3server.wire import stuff_message
from tests.pop3.conftest import PASSWORD, deliver

USER = "user@pop.test"
MiB = 1024 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def big_message(size: int) -> bytes:
    lines = [b"Subject: big\r\n", b"\r\n"]
    n = 0
    total = 16
    while total < size:
        line = (b".dot line %08d " % n if n % 997 == 0 else b"line %08d " % n) + b"z" * 60 + b"\r\n"
        lines.append(line)
        total += len(line)
        n += 1
    return b"".join(lines)


def retr_streaming(sock, f, pid: int, expected_len: int) -> tuple[str, int, int]:
    """RETR 1 reading 256 KiB at a time; returns (sha256 of the wire, octets, max RSS KiB)."""
    sock.sendall(b"RETR 1\r\n")
    h = hashlib.sha256()
    got = 0
    tail = b""
    peak = 0
    next_sample = 0
    deadline = time.monotonic() + 120
    while True:
        data = f.read1(256 * 1024)
        assert data, "connection closed mid-message"
        h.update(data)
        got += len(data)
        tail = (tail + data)[-5:]
        if got >= next_sample:
            peak = max(peak, rss_kib(pid))
            next_sample += 2 * MiB
        if got >= expected_len and tail == b"\r\n.\r\n":
            break
        assert time.monotonic() < deadline
    return h.hexdigest(), got, peak


@pytest.mark.slow
def test_retr_50mib_streams_with_bounded_rss(mh_env, server_factory):
    mh_env.add_user(USER, PASSWORD)
    server = server_factory(mh_env).start()
    big = big_message(50 * MiB)
    deliver(mh_env, USER, [big])
    wire = b"+OK %d octets\r\n" % len(big) + stuff_message(big)
    expected = hashlib.sha256(wire).hexdigest()
    assert wire.count(b"\r\n..dot line ") > 500  # dot-stuffing is exercised
    del big
    pid = server.proc.pid

    for implicit_tls in (False, True):
        raw = socket.create_connection(
            ("127.0.0.1", server.port("pop3s" if implicit_tls else "pop3")), timeout=30)
        if implicit_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
        f = raw.makefile("rb")
        assert f.readline().startswith(b"+OK")
        raw.sendall(b"USER %s\r\nPASS %s\r\n" % (USER.encode(), PASSWORD.encode()))
        assert f.readline() == b"+OK\r\n"
        assert f.readline().startswith(b"+OK Logged in, 1 messages")
        raw.sendall(b"NOOP\r\n")
        assert f.readline() == b"+OK\r\n"
        before = rss_kib(pid)
        digest, octets, peak = retr_streaming(raw, f, pid, len(wire))
        assert octets == len(wire) and digest == expected
        grew = (peak - before) / 1024
        print(f"50 MiB RETR tls={implicit_tls}: RSS {before / 1024:.1f} MiB before, "
              f"peak {peak / 1024:.1f} MiB")
        assert grew < 8, f"RSS grew by {grew:.1f} MiB during a 50 MiB RETR (tls={implicit_tls})"
        raw.sendall(b"NOOP\r\nQUIT\r\n")  # the session reads on after the message
        assert f.readline() == b"+OK\r\n"
        assert f.readline().startswith(b"+OK Logging out")
        raw.close()
