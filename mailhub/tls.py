"""TLS: the server certificate (configured, or self-signed generated in the data dir) and the
pyOpenSSL context every TLS listener and STARTTLS uses (TLS 1.2 minimum), re-read without a
restart when the files change or on SIGHUP (``ReloadingServerTLS``)."""
from __future__ import annotations

import datetime
import os
import time
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl

from mailhub.config import Config, ConfigError


def generate_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """A P-256 self-signed certificate for hostname (and localhost), valid 10 years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(hostname)]
    if hostname != "localhost":
        sans.append(x509.DNSName("localhost"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def certificate_paths(cfg: Config) -> tuple[Path, Path, bool]:
    """(certificate, key, generated_now). Generates the self-signed pair when none is set."""
    tls = cfg["tls"]
    if tls["certificate"]:
        return Path(tls["certificate"]), Path(tls["private_key"]), False
    cert = cfg.data_dir / "tls" / "selfsigned-cert.pem"
    key = cfg.data_dir / "tls" / "selfsigned-key.pem"
    if cert.exists() and key.exists():
        return cert, key, False
    generate_self_signed(cert, key, cfg.hostname)
    return cert, key, True


def server_context(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """CertificateOptions for servers; ConfigError naming the file when it does not load."""
    try:
        cert_pem = Path(cert_path).read_bytes()
    except OSError as e:
        raise ConfigError(f"tls.certificate: cannot read {cert_path}: {e.strerror}") from None
    try:
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        raise ConfigError(f"tls.private_key: cannot read {key_path}: {e.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise ConfigError(f"tls.certificate: {cert_path} is not a PEM certificate: {e}") from None
    try:
        priv = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except Exception as e:
        raise ConfigError(f"tls.private_key: {key_path} is not a PEM private key: {e}") from None
    leaf = ssl.Certificate.loadPEM(chain[0].public_bytes(serialization.Encoding.PEM))
    extra = [crypto.X509.from_cryptography(c) for c in chain[1:]]
    try:
        options = ssl.CertificateOptions(
            privateKey=priv.original,
            certificate=leaf.original,
            extraCertChain=extra or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        with warnings.catch_warnings():  # Twisted hands pyOpenSSL objects to pyOpenSSL
            warnings.simplefilter("ignore", DeprecationWarning)
            options.getContext()  # builds the context: this is where a key/cert mismatch shows
        return options
    except Exception as e:
        raise ConfigError(f"tls: certificate {cert_path} and key {key_path} do not match: {e}") from None


class ReloadingServerTLS:
    """The server's TLS context factory, re-read when the certificate or key files change.

    Every listener and STARTTLS gets this object; Twisted asks it for a context
    (``getContext``) for each new TLS connection. At most every ``check_interval`` seconds
    that call compares the files' (inode, size, mtime) with those loaded, and a change loads
    the pair again: a certificate renewed by certbot or an ACME client is in use within a
    minute, without a restart. ``reload()`` checks at once (the server calls it on SIGHUP,
    i.e. ``systemctl reload mailhub``). A pair that does not load (half-written, key and
    certificate not matching yet) is logged and the current one stays in use; the next
    change of the files is tried again. Connections already open keep their session.
    """

    def __init__(self, cert_path: Path, key_path: Path, check_interval: float = 60.0,
                 clock=None, log=None):
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self.check_interval = check_interval
        self._clock = clock or time.monotonic
        self._log = log
        self._options = server_context(self.cert_path, self.key_path)  # ConfigError at start
        self._stamp = self._stamps()
        self._tried = self._stamp
        self._checked = self._clock()
        self.reloads = 0

    def _stamps(self):
        out = []
        for p in (self.cert_path, self.key_path):
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def getContext(self):
        now = self._clock()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self.reload()
        return self._options.getContext()

    def reload(self) -> bool:
        """Load the files again if they changed since the last attempt; True if a new pair
        is now in use."""
        stamp = self._stamps()
        if stamp == self._stamp or stamp == self._tried:
            return False
        self._tried = stamp
        try:
            options = server_context(self.cert_path, self.key_path)
        except ConfigError as e:
            if self._log is not None:
                self._log.error("TLS certificate not reloaded, the current one stays in use: "
                                "{error}", error=str(e))
            return False
        self._options, self._stamp = options, stamp
        self.reloads += 1
        if self._log is not None:
            self._log.info("TLS certificate reloaded from {cert}", cert=str(self.cert_path))
        return True
