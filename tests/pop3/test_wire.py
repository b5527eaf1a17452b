"""The POP3 wire helpers without sockets: line splitting, parsing, dot-stuffing, TOP, SASL."""
from __future__ import annotations

import base64
import io
import random

import pytest

from mailhub.pop3server.wire import (
    TOO_LONG, DotStuffer, LineSplitter, decode_sasl_plain, parse_command, rest_after_verb,
    stuff_message, top_chunks, uidl_for_key,
)


def unstuff(wire: bytes) -> bytes:
    """What a client reconstructs from a multi-line body (RFC 1939 3)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire.split(b"\r\n")
    assert lines[-1] == b"" and lines[-2] == b"."
    out = []
    for line in lines[:-2]:
        assert line != b".", "a lone dot inside the body would end it early"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(l + b"\r\n" for l in out)


def test_line_splitter_crlf_lf_and_partial():
    s = LineSplitter(255)
    s.feed(b"USER a\r\nPASS b\nNO")
    assert s.next() == b"USER a"
    assert s.next() == b"PASS b"
    assert s.next() is None
    s.feed(b"OP\r\n")
    assert s.next() == b"NOOP"
    assert s.next() is None


def test_line_splitter_limit_is_255_octets():
    s = LineSplitter(255)
    s.feed(b"A" * 255 + b"\r\n" + b"B" * 256 + b"\r\nNOOP\r\n")
    assert s.next() == b"A" * 255
    assert s.next() is TOO_LONG
    assert s.next() == b"NOOP"


def test_line_splitter_overlong_line_in_pieces_stays_bounded():
    s = LineSplitter(255)
    for _ in range(1000):  # 1 MB without a line end
        s.feed(b"x" * 1000)
        assert s.next() is None
        assert len(s) < 2000
    s.feed(b"tail\r\nSTAT\r\n")
    assert s.next() is TOO_LONG
    assert s.next() == b"STAT"
    assert s.next() is None


def test_parse_command():
    assert parse_command(b"retr 1") == ("RETR", [b"1"])
    assert parse_command(b"  TOP   2  10 ") == ("TOP", [b"2", b"10"])
    assert parse_command(b"") == ("", [])
    assert parse_command(b"\xff\xfe x") == ("?", [b"x"])
    assert rest_after_verb(b"PASS pass word with spaces") == b"pass word with spaces"
    assert rest_after_verb(b"PASS") == b""


@pytest.mark.parametrize("msg", [
    b"Subject: x\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
    b".starts with a dot\r\n\r\nbody\r\n",
    b"no final newline\r\n\r\n.last",
    b"bare\nLF\n.dot\n",
    b"mixed\r\nends\n\r\n.\n",
    b"",
    b"ends in CR\r",
])
def test_stuff_message_round_trips(msg):
    wire = stuff_message(msg)
    assert wire.endswith(b".\r\n")
    # every line end on the wire is CRLF
    assert wire.count(b"\n") == wire.count(b"\r\n")
    normalised = msg.replace(b"\r\n", b"\n").replace(b"\r", b"\r").replace(b"\n", b"\r\n")
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\n" if normalised.endswith(b"\r") else b"\r\n"
    assert unstuff(wire) == normalised


def test_stuffed_crlf_message_keeps_its_octets():
    msg = b"From: a\r\n\r\n" + b"line\r\n" * 100
    assert stuff_message(msg) == msg + b".\r\n"


@pytest.mark.parametrize("seed", range(30))
def test_dotstuffer_any_chunking_equals_whole(seed):
    rnd = random.Random(seed)
    parts = [b".", b"\r\n", b"\n", b"\r", b"x", b"..", b"\r\n.\r\n", b"abc"]
    msg = b"".join(rnd.choice(parts) for _ in range(rnd.randint(0, 200)))
    cuts = sorted(rnd.sample(range(len(msg) + 1), min(len(msg) + 1, rnd.randint(0, 20))))
    chunks, prev = [], 0
    for c in cuts + [len(msg)]:
        chunks.append(msg[prev:c])
        prev = c
    st = DotStuffer()
    streamed = b"".join(st.feed(c) for c in chunks) + st.finish()
    assert streamed == stuff_message(msg), (msg, chunks)


def test_top_chunks_header_and_n_lines():
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert b"".join(top_chunks(io.BytesIO(msg), 0)) == b"A: 1\r\nB: 2\r\n\r\n"
    assert b"".join(top_chunks(io.BytesIO(msg), 2)) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert b"".join(top_chunks(io.BytesIO(msg), 99)) == msg
    # a message without a body: the whole header
    assert b"".join(top_chunks(io.BytesIO(b"A: 1\r\n"), 3)) == b"A: 1\r\n"


def test_top_chunks_long_line_read_in_pieces():
    msg = b"A: 1\r\n\r\n" + b"y" * 300000 + b"\r\nsecond\r\nthird\r\n"
    chunks = list(top_chunks(io.BytesIO(msg), 2, chunk_size=65536))
    assert max(len(c) for c in chunks) <= 2 * 65536
    assert b"".join(chunks) == b"A: 1\r\n\r\n" + b"y" * 300000 + b"\r\nsecond\r\n"


def test_sasl_plain():
    enc = base64.b64encode(b"\x00user@pop.test\x00pw d").rstrip()
    assert decode_sasl_plain(enc) == ("", "user@pop.test", "pw d")
    assert decode_sasl_plain(base64.b64encode(b"az\x00u\x00p")) == ("az", "u", "p")
    assert decode_sasl_plain(b"not base64!") is None
    assert decode_sasl_plain(base64.b64encode(b"u\x00p")) is None
    assert decode_sasl_plain(base64.b64encode(b"\x00u\x00")) is None
    assert decode_sasl_plain(b"") is None


def test_uidl_syntax():
    key = "1795412292.M176679P12672Q0.vm,S=3934"
    assert uidl_for_key(key) == key
    long_key = "1795412292.M176679P12672Q0." + "h" * 80 + ",S=1"
    u = uidl_for_key(long_key)
    assert u == uidl_for_key(long_key) and len(u) <= 70 and u != long_key
    spaced = uidl_for_key("a b")
    assert " " not in spaced and spaced != uidl_for_key("a_b")
