"""Per-domain DKIM keys and signing (RSA-2048, SHA-256, relaxed/relaxed, via dkimpy).

Layout: ``<data_dir>/dkim/<domain>/<selector>.rsa.pem`` (mode 0600) and
``<data_dir>/dkim/<domain>/current`` naming the active selector. Selectors are
``mh<YYYYMMDD>`` (+ a letter when rotated twice a day), so a rotation publishes a new
selector while the old record can stay in DNS until mail signed with it has aged out.
"""
from __future__ import annotations

import base64
import os
import string
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa



def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _domain(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"not a domain name: {name!r}")
    return name


class DKIMKeys:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, tuple[float, str, bytes]] = {}

    def domain_dir(self, domain: str) -> Path:
        return self.root / _domain(domain)

    def generate(self, domain: str) -> str:
        """Make a new RSA-2048 key for the domain and make it current; returns the selector."""
        d = self.domain_dir(domain)
        d.mkdir(parents=True, exist_ok=True)
        base = time.strftime("mh%Y%m%d", time.gmtime())
        selector = base
        for suffix in [""] + list(string.ascii_lowercase):
            selector = base + suffix
            if not (d / f"{selector}.rsa.pem").exists():
                break
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _atomic_write(d / f"{selector}.rsa.pem", pem, 0o600)
        _atomic_write(d / "current", selector.encode() + b"\n")
        self._cache.pop(_domain(domain), None)
        return selector

    def current(self, domain: str) -> tuple[str, bytes] | None:
        """(selector, private key PEM) of the domain's active key, or None."""
        name = _domain(domain)
        cur = self.root / name / "current"
        try:
            mtime = cur.stat().st_mtime
        except FileNotFoundError:
            return None
        hit = self._cache.get(name)
        if hit and hit[0] == mtime:
            return hit[1], hit[2]
        selector = cur.read_text().strip()
        pem = (self.root / name / f"{selector}.rsa.pem").read_bytes()
        self._cache[name] = (mtime, selector, pem)
        return selector, pem

    def public_record(self, domain: str) -> tuple[str, str] | None:
        """(selector, TXT value ``v=DKIM1; k=rsa; p=...``) of the active key, or None."""
        cur = self.current(domain)
        if cur is None:
            return None
        selector, pem = cur
        key = serialization.load_pem_private_key(pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return selector, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


class DKIMSigner:
    """``sign(domain, message) -> b"DKIM-Signature: ...\\r\\n"`` (b"" when not possible).
    With ``generate_missing`` a domain without a key gets one on first use."""

    def __init__(self, keys: DKIMKeys, generate_missing: bool = True, log=None):
        self.keys = keys
        self.generate_missing = generate_missing
        self.log = log

    def _key(self, domain: str) -> tuple[str, bytes] | None:
        cur = self.keys.current(domain)
        if cur is None and self.generate_missing:
            self.keys.generate(domain)
            cur = self.keys.current(domain)
            if self.log:
                self.log.info("generated a DKIM key for {domain}; publish it: mailhub "
                              "dns-records {domain}", domain=domain)
        return cur

    def sign_file(self, domain: str, path) -> bytes:
        """The same signature for a message file, read in chunks (any size)."""
        from mailhub.dkim.stream import sign_file

        cur = self._key(domain)
        if cur is None:
            return b""
        return sign_file(path, cur[0], _domain(domain), cur[1])

    def sign(self, domain: str, message: bytes) -> bytes:
        import dkim

        cur = self.keys.current(domain)
        if cur is None:
            if not self.generate_missing:
                return b""
            self.keys.generate(domain)
            cur = self.keys.current(domain)
            if self.log:
                self.log.info("generated a DKIM key for {domain}; publish it: mailhub "
                              "dns-records {domain}", domain=domain)
        selector, pem = cur
        sig = dkim.sign(message, selector.encode(), _domain(domain).encode(), pem,
                        canonicalize=(b"relaxed", b"relaxed"), linesep=b"\r\n")
        return sig
