"""The streamed DKIM signer (mailhub/dkim/stream.py) agrees with dkimpy: its relaxed body
hash equals dkimpy's canonicalisation on random bodies, and its signatures verify with
dkimpy on the shared corpus and on a large message."""
from __future__ import annotations

import base64
import hashlib
import random

import dkim
import pytest
from dkim.canonicalization import Relaxed

from mailhub.dkim import DKIMKeys, DKIMSigner
from mailhub.dkim.stream import RelaxedBodyHash
from tests.conftest import CORPUS


def test_relaxed_body_hash_matches_dkimpy():
    rnd = random.Random(11)
    pieces = [b"a", b" ", b"\t", b"\r\n", b"x y", b"  \r\n", b"\r\n\r\n", b"z\t\t", b"\r",
              b"\n", b"\xc3\xa9"]
    for _ in range(5000):
        body = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 30)))
        h, i = RelaxedBodyHash(), 0
        while i < len(body):
            n = rnd.randint(1, 6)
            h.update(body[i:i + n])
            i += n
        assert h.digest() == hashlib.sha256(Relaxed.canonicalize_body(body)).digest(), body


@pytest.fixture
def signer(tmp_path):
    keys = DKIMKeys(tmp_path / "dkim")
    keys.generate("example.com")
    sel, txt = keys.public_record("example.com")
    return DKIMSigner(keys), (lambda name, timeout=5: txt.encode())


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_streamed_signatures_verify_on_the_corpus(tmp_path, signer):
    s, dnsfunc = signer
    files = sorted(CORPUS.rglob("*.eml")) if CORPUS.exists() else []
    msgs = [_crlf(p.read_bytes()) for p in files]
    msgs.append(b"From: a@example.com\r\nSubject: t\r\n\r\n  spaced \t body \r\n\r\n\r\n")
    msgs.append(b"From: a@example.com\r\nSubject: no final newline\r\n\r\nlast line\t")
    checked = 0
    for i, data in enumerate(msgs):
        if b"\r\n\r\n" not in data or not any(
                line.lower().startswith(b"from:") for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")):
            continue
        p = tmp_path / f"m{i}"
        p.write_bytes(data)
        sig = s.sign_file("example.com", p)
        assert sig.startswith(b"DKIM-Signature: ") and sig.endswith(b"\r\n")
        assert dkim.verify(sig + data, dnsfunc=dnsfunc), files[i] if i < len(files) else data
        checked += 1
    assert checked >= min(50, len(msgs) // 2)


def test_streamed_signature_of_a_large_message(tmp_path, signer):
    s, dnsfunc = signer
    body = b"".join(b"line %d with  some\tspace  \r\n" % i for i in range(200_000))
    data = b"From: a@example.com\r\nTo: b@far.test\r\nSubject: big\r\n\r\n" + body
    p = tmp_path / "big"
    p.write_bytes(data)
    sig = s.sign_file("example.com", p)
    assert dkim.verify(sig + data, dnsfunc=dnsfunc)
    assert not dkim.verify(sig + data.replace(b"line 777 ", b"line 778 "), dnsfunc=dnsfunc)
    bh = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())
    assert b"bh=" + bh in sig.replace(b"\r\n ", b"")
