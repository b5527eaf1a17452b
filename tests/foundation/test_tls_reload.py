"""Certificate renewal without a restart: the TLS context is re-read when the files change
(checked at most once a minute) and at once on SIGHUP (``systemctl reload``), which must not
end the server."""
import os
import signal
import socket
import ssl
import time

from cryptography import x509

from mailhub.tls import ReloadingServerTLS, generate_self_signed
from tests.conftest import MailhubEnv, MailhubServer


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def serial_of(options: ReloadingServerTLS) -> int:
    return options._options.certificate.get_serial_number()


def file_serial(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def renew(cert, key, hostname="mail.test.example"):
    """What certbot does: new files put in place by rename."""
    generate_self_signed(cert.with_name("new-cert.pem"), key.with_name("new-key.pem"), hostname)
    os.replace(key.with_name("new-key.pem"), key)
    os.replace(cert.with_name("new-cert.pem"), cert)


def test_changed_files_are_picked_up_after_the_check_interval(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key, "mail.test.example")
    clock = FakeClock()
    tls = ReloadingServerTLS(cert, key, check_interval=60, clock=clock)
    first = serial_of(tls)
    assert first == file_serial(cert)
    tls.getContext()
    renew(cert, key)
    clock.now += 30
    tls.getContext()
    assert serial_of(tls) == first  # not checked yet
    clock.now += 31
    tls.getContext()
    assert serial_of(tls) == file_serial(cert) != first
    assert tls.reloads == 1
    clock.now += 61
    tls.getContext()
    assert tls.reloads == 1  # unchanged files: nothing loaded again


def test_a_broken_renewal_keeps_the_current_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key, "mail.test.example")
    tls = ReloadingServerTLS(cert, key)
    first = serial_of(tls)
    good_key = key.read_bytes()
    generate_self_signed(tmp_path / "other-cert.pem", tmp_path / "other-key.pem", "x.example")
    os.replace(tmp_path / "other-cert.pem", cert)  # certificate renewed, key not yet
    assert tls.reload() is False
    assert serial_of(tls) == first
    assert tls.getContext() is not None
    assert tls.reload() is False  # the same broken pair is not tried again
    key.write_bytes(b"not a key")
    assert tls.reload() is False
    os.replace(tmp_path / "other-key.pem", key)  # now the pair matches
    assert tls.reload() is True
    assert serial_of(tls) == file_serial(cert) != first
    assert good_key != key.read_bytes()


def peer_serial(port: int) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
            assert s.recv(100).startswith(b"* OK")
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_certificate_and_the_server_stays_up(tmp_path):
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    generate_self_signed(cert, key, "mail.test.example")
    env = MailhubEnv(tmp_path / "mh", extra_toml=(
        f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'))
    server = MailhubServer(env).start()
    try:
        port = server.port("imaps")
        first = peer_serial(port)
        assert first == file_serial(cert)
        renew(cert, key)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reloaded" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.proc.poll() is None, server.log()
        assert "TLS certificate reloaded" in server.log()
        assert peer_serial(port) == file_serial(cert) != first
        server.proc.send_signal(signal.SIGHUP)  # nothing changed: still up, still serving
        time.sleep(0.3)
        assert server.proc.poll() is None
        assert peer_serial(port) == file_serial(cert)
    finally:
        assert server.stop() in (0, -15)


def test_mismatched_pair_is_a_clear_config_error(tmp_path):
    import pytest
    from mailhub.config import ConfigError
    from mailhub.tls import server_context
    generate_self_signed(tmp_path / "a-cert.pem", tmp_path / "a-key.pem", "a.example")
    generate_self_signed(tmp_path / "b-cert.pem", tmp_path / "b-key.pem", "b.example")
    with pytest.raises(ConfigError, match="do not match"):
        server_context(tmp_path / "a-cert.pem", tmp_path / "b-key.pem")
