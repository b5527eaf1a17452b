"""DKIM signing of a message file without reading it whole: the relaxed body hash is
computed line by line (RFC 6376 3.4.4, matching dkimpy's Relaxed canonicalisation), and
dkimpy signs the header fields with that body hash. Memory: the header section plus one
64 KB chunk, whatever the message size."""
from __future__ import annotations

import base64
import hashlib
import re
import time

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import parse_pem_private_key

_WSP_EOL = re.compile(rb"[\t ]+\r\n")
_WSP = re.compile(rb"[\t ]+")
CHUNK = 64 * 1024


class RelaxedBodyHash:
    """Feed body bytes (CRLF lines) in any chunks; ``digest()`` is dkimpy's
    sha256(Relaxed.canonicalize_body(body))."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.carry = b""
        self.empty_lines = 0   # trailing empty lines not yet known to be inside the body

    def _lines(self, block: bytes) -> None:
        """A run of complete lines (ends with CRLF)."""
        block = _WSP.sub(b" ", _WSP_EOL.sub(b"\r\n", block))
        end, n = len(block), 0
        while block.endswith(b"\r\n", 0, end):  # trailing empty lines are held back:
            end -= 2                               # they count only if something follows
            n += 1
        if end:
            if self.empty_lines:
                self.h.update(b"\r\n" * self.empty_lines)
            self.h.update(block[:end])
            self.h.update(b"\r\n")
            self.empty_lines = n - 1
        else:
            self.empty_lines += n

    def update(self, chunk: bytes) -> None:
        buf = self.carry + chunk
        cut = buf.rfind(b"\r\n")
        if cut < 0:
            self.carry = buf
            return
        cut += 2
        self.carry = buf[cut:]
        self._lines(buf[:cut])

    def digest(self) -> bytes:
        if self.carry:
            # a last line without CRLF: WSP compressed, kept, and a CRLF added (as dkimpy)
            self.h.update(b"\r\n" * self.empty_lines + _WSP.sub(b" ", self.carry) + b"\r\n")
            self.carry, self.empty_lines = b"", 0
        return self.h.digest()


def _split_file(path, prefix: bytes) -> tuple[bytes, int]:
    """(header section including the blank line, offset of the body in the file)."""
    head = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end >= 0:
                return prefix + head[:end + 4], end + 4
            if not chunk or len(head) > 4 * 1024 * 1024:
                return prefix + head + b"\r\n", len(head)


def sign_file(path, selector: str, domain: str, pem: bytes, prefix: bytes = b"") -> bytes:
    """``DKIM-Signature: ...\\r\\n`` for the message at ``path`` (rsa-sha256, relaxed/relaxed,
    dkimpy's default header list)."""
    headers, body_at = _split_file(path, prefix)
    bh = RelaxedBodyHash()
    with open(path, "rb") as f:
        f.seek(body_at)
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            bh.update(chunk)
    bodyhash = base64.b64encode(bh.digest())

    d = dkim.DKIM(headers, signature_algorithm=b"rsa-sha256", linesep=b"\r\n")
    d.hasher = hashlib.sha256
    pk = parse_pem_private_key(pem)
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    include = tuple(x.lower() for x in d.default_sign_headers())
    if b"from" not in include:
        raise dkim.ParameterError("The From header field MUST be signed")
    d.include_headers = include
    dom = domain.encode("ascii")
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", dom),
        (b"i", b"@" + dom), (b"q", b"dns/txt"), (b"s", selector.encode("ascii")),
        (b"t", str(int(time.time())).encode("ascii")), (b"h", b" : ".join(include)),
        (b"bh", bodyhash), (b"b", b"0" * 60),
    ]
    return b"DKIM-Signature: " + d.gen_header(fields, include, canon, b"DKIM-Signature", pk)
