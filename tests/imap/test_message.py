"""message.py over the shared mail corpus: no input makes the MIME/ENVELOPE code raise, the
fast address path agrees with email.utils, section bytes are exact."""
import email.utils

import pytest

from mailhub.imapserver import message as M
from mailhub.imapserver.parser import Section
from tests.conftest import CORPUS

FILES = sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not FILES, reason="mail corpus not available")
def test_corpus_structure_and_envelope():
    for path in FILES:
        data = path.read_bytes()
        msg = M.parse_message(data)
        bs = M.bodystructure(msg)
        assert bs.startswith(b"(") and bs.endswith(b")") and bs.count(b"(") >= bs.count(b")") - bs.count(b'")')
        assert M.bodystructure(msg, extended=False).startswith(b"(")
        env = M.envelope(msg.headers)
        assert env.startswith(b"(") and env.endswith(b")")
        whole = M.section_bytes(msg, Section())
        assert whole == data
        hdr = M.section_bytes(msg, Section((), "HEADER"))
        text = M.section_bytes(msg, Section((), "TEXT"))
        assert hdr + text == data
        for n in range(1, 4):  # parts may not exist: None, never an exception
            M.section_bytes(msg, Section((n,)))
            M.section_bytes(msg, Section((n,), "MIME"))


@pytest.mark.skipif(not FILES, reason="mail corpus not available")
def test_fast_address_path_agrees_with_email_utils():
    checked = 0
    for path in FILES:
        for name, value, _raw in M.parse_headers(path.read_bytes()):
            if name not in (b"from", b"to", b"cc", b"reply-to", b"sender"):
                continue
            text = value.decode("utf-8", "surrogateescape")
            fast = M._fast_pairs(text)
            if fast is not None:
                assert fast == email.utils.getaddresses([text]), text
                checked += 1
    assert checked > 10


def test_sections_of_nested_message():
    data = (b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
            b"one\r\n--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n\r\ntwo-a\r\n"
            b"--b2\r\nContent-Type: text/html\r\n\r\n<p>two-b</p>\r\n--b2--\r\n--b1--\r\n")
    msg = M.parse_message(data)
    assert M.section_bytes(msg, Section((1,))) == b"one"
    assert M.section_bytes(msg, Section((2, 1))) == b"two-a"
    assert M.section_bytes(msg, Section((2, 2))) == b"<p>two-b</p>"
    assert M.section_bytes(msg, Section((2, 2), "MIME")) == b"Content-Type: text/html\r\n\r\n"
    assert M.section_bytes(msg, Section((3,))) is None
    bs = M.bodystructure(msg)
    assert b'"ALTERNATIVE"' in bs and b'"HTML"' in bs and b'"MIXED"' in bs
    hf = M.header_fields(b"A: 1\r\nB: 2\r\n c\r\nC: 3\r\n\r\n", [b"b", b"c"])
    assert hf == b"B: 2\r\n c\r\nC: 3\r\n\r\n"
    assert M.header_fields(b"A: 1\r\nB: 2\r\n\r\n", [b"b"], negate=True) == b"A: 1\r\n\r\n"


def test_malformed_mime_never_raises():
    for data in (b"", b"\r\n", b"no header separator", b"Content-Type: multipart/mixed\r\n\r\nbody",
                 b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nunterminated",
                 b"Content-Type: message/rfc822\r\n\r\n", b"Content-Type: /\r\n\r\nx",
                 b"Content-Type: text/plain; charset=\"unterminated\r\n\r\nx",
                 b"From: <<<@@@>>>\r\nTo: ,,,\r\n\r\n"):
        msg = M.parse_message(data)
        M.bodystructure(msg)
        M.envelope(msg.headers)
        M.section_bytes(msg, Section((1,)))
