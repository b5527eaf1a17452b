"""DATA/BDAT decoding as a pure function of bytes: any chunking gives the same result."""
import random

import pytest

from mailhub.smtpserver.datastream import (
    PARTIAL_LINE_LIMIT, CRLFNormalizer, DotDecoder, HeaderFixer,
)
from tests.conftest import CORPUS


def decode_all(data: bytes, sizes) -> tuple[bytes, bytes]:
    d = DotDecoder()
    out = []
    pos = 0
    it = iter(sizes)
    while pos < len(data):
        n = next(it)
        chunk, pos = data[pos:pos + n], pos + n
        o, done, left = d.feed(chunk)
        out.append(o)
        if done:
            return b"".join(out), left + data[pos:]
    raise AssertionError("no end of data found")


def chunkings(seed: int):
    rng = random.Random(seed)
    yield iter(lambda: 1, None)                     # byte by byte
    yield iter(lambda: 65536, None)                 # all at once
    yield iter(lambda: rng.randint(1, 40), None)    # random small pieces


def stuff(msg: bytes) -> bytes:
    """What a client sends: CRLF lines, dot-stuffed, terminated."""
    lines = msg.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines) + b".\r\n"


@pytest.mark.parametrize("seed", range(3))
def test_roundtrip_dot_stuffing_any_chunking(seed):
    msg = (b"Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nnot end\r\n" + b"x" * 50 + b"\r\n")
    wire = stuff(msg) + b"QUIT\r\n"
    for sizes in chunkings(seed):
        out, left = decode_all(wire, sizes)
        assert out == msg
        assert left == b"QUIT\r\n"


def test_bare_lf_becomes_crlf_and_bare_cr_is_kept():
    out, left = decode_all(b"a\nb\r\nc\rd\r\n.\r\n", iter(lambda: 3, None))
    assert out == b"a\r\nb\r\nc\rd\r\n"
    assert left == b""


def test_empty_message_ends_at_once():
    out, left = decode_all(b".\r\nNOOP\r\n", iter(lambda: 100, None))
    assert out == b"" and left == b"NOOP\r\n"


def test_smuggling_dot_after_bare_lf_does_not_end_data():
    # "\n.\r\n" (or "\r\n.\n") must not end DATA: only <CRLF>.<CRLF> does (CVE-2023-51766)
    wire = b"Subject: x\r\n\r\nbody\n.\r\nMAIL FROM:<evil@x.example>\r\n.\n" \
           b"RCPT TO:<v@y.example>\r\n.\r\n"
    for sizes in chunkings(1):
        out, left = decode_all(wire, sizes)
        assert left == b""
        assert b"MAIL FROM:<evil@x.example>\r\n" in out
        assert b"RCPT TO:<v@y.example>\r\n" in out


def test_very_long_line_is_passed_on_in_pieces():
    long_line = b"y" * (PARTIAL_LINE_LIMIT * 3 + 7)
    d = DotDecoder()
    out, done, _ = d.feed(long_line[: PARTIAL_LINE_LIMIT * 2])
    assert not done and len(out) >= PARTIAL_LINE_LIMIT  # not all held back
    rest, done, left = d.feed(long_line[PARTIAL_LINE_LIMIT * 2:] + b"\r\n.\r\n")
    assert done and left == b""
    assert out + rest == long_line + b"\r\n"


def test_corpus_messages_survive_the_wire():
    files = sorted(CORPUS.glob("*.eml"))
    if not files:
        pytest.skip(f"the shared mail corpus is not next to this checkout ({CORPUS})")
    for f in files:
        raw = f.read_bytes()
        crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not crlf.endswith(b"\r\n"):
            crlf += b"\r\n"
        out, _ = decode_all(stuff(crlf), iter(lambda: 997, None))
        assert out == crlf, f.name


def test_crlf_normalizer_across_chunk_boundaries():
    n = CRLFNormalizer()
    parts = [b"a\r", b"\nb\n", b"c\r", b"", b"\r\n", b"d\r"]
    out = b"".join(n.feed(p) for p in parts) + n.finish()
    assert out == b"a\r\nb\r\nc\r\r\nd\r"


def test_header_fixer_adds_missing_fields_at_end_of_header():
    need = {"message-id": lambda: b"Message-ID: <x@y>\r\n", "date": lambda: b"Date: now\r\n"}
    msg = b"From: a@b\r\nSubject: s\r\n  folded\r\n\r\nbody\r\nDate: not a header\r\n"
    for step in (1, 5, 1000):
        fx = HeaderFixer(need)
        out = b"".join(fx.feed(msg[i:i + step]) for i in range(0, len(msg), step)) + fx.finish()
        assert out == (b"From: a@b\r\nSubject: s\r\n  folded\r\nMessage-ID: <x@y>\r\n"
                       b"Date: now\r\n\r\nbody\r\nDate: not a header\r\n")


def test_header_fixer_keeps_present_fields_and_handles_header_only_message():
    need = {"message-id": lambda: b"Message-ID: <new@y>\r\n", "date": lambda: b"Date: d\r\n"}
    fx = HeaderFixer(need)
    out = fx.feed(b"message-ID: <old@x>\r\nSubject: no body") + fx.finish()
    assert out == b"message-ID: <old@x>\r\nSubject: no body\r\nDate: d\r\n"
    fx = HeaderFixer()  # nothing needed: a pass-through that counts Received: fields
    msg = b"Received: a\r\nreceived: b\r\n c\r\nSubject: x\r\n\r\nReceived: body\r\n"
    assert b"".join(fx.feed(msg[i:i + 7]) for i in range(0, len(msg), 7)) + fx.finish() == msg
    assert fx.received == 2


def test_header_fixer_holds_a_bounded_amount():
    fx = HeaderFixer({"date": lambda: b"Date: d\r\n"})
    out = fx.feed(b"X-Long: " + b"a" * (HeaderFixer.MAX_HEADER + 10))  # no line end at all
    assert fx.done and len(out) == HeaderFixer.MAX_HEADER + 18  # passed on, nothing added
    assert fx.feed(b"\r\n\r\nbody") == b"\r\n\r\nbody"


def reference_decode(wire: bytes):
    """Line by line, the obvious way: the specification DotDecoder must match."""
    out, pos, prev_crlf = [], 0, True
    while True:
        nl = wire.find(b"\n", pos)
        if nl < 0:
            return None
        line = wire[pos:nl + 1]
        pos = nl + 1
        if line == b".\r\n" and prev_crlf:
            return b"".join(out), wire[pos:]
        prev_crlf = line.endswith(b"\r\n")
        if line.startswith(b"."):
            line = line[1:]
        if not line.endswith(b"\r\n"):
            line = line[:-1] + b"\r\n"
        out.append(line)


@pytest.mark.parametrize("seed", range(4))
def test_dot_decoder_matches_the_line_by_line_reference(seed):
    rng = random.Random(seed)
    tokens = [b".", b"..", b"\r", b"\n", b"\r\n", b"x", b"yz", b".\r\n", b"\r\n.\r\n", b"\n.\n"]
    for _ in range(300):
        wire = b"".join(rng.choice(tokens) for _ in range(rng.randint(0, 40))) + b"\r\n.\r\nTAIL"
        expected = reference_decode(wire)
        assert expected is not None
        for sizes in (iter(lambda: 1, None), iter(lambda: rng.randint(1, 9), None),
                      iter(lambda: 10 ** 6, None)):
            assert decode_all(wire, sizes) == expected, wire
