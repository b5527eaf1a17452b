"""Config loading and validation: defaults, unknown keys, wrong types, paths; check-config."""
import os
import subprocess
import sys

import pytest

from mailhub.config import ConfigError, DEFAULT_PORTS, load, parse_duration
from tests.conftest import subprocess_env


def write(tmp_path, text):
    p = tmp_path / "mailhub.toml"
    p.write_text(text)
    return p


def test_embedded_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load(None)
    assert cfg.data_dir == tmp_path / "mailhub-data"
    assert cfg.hostname
    ls = cfg.listeners()
    for name, port in DEFAULT_PORTS.items():
        assert ls[name] == [f"tcp:{port}:interface=127.0.0.1"]
    assert DEFAULT_PORTS == {"mx": 2525, "submission": 2587, "submissions": 2465, "pop3": 2110,
                             "pop3s": 2995, "imap": 2143, "imaps": 2993}
    assert cfg["smtp"]["max_message_size"] == 50 * 1024 * 1024
    assert cfg["smtp"]["max_recipients"] == 100
    assert cfg["queue"]["max_age"] == 5 * 86400


def test_example_production_config_is_valid():
    from tests.conftest import REPO

    cfg = load(REPO / "etc" / "mailhub.toml", check_paths=False)
    assert cfg.listeners()["mx"] == ["tcp:25"]
    assert cfg.listeners()["imaps"] == ["tcp:993"]
    assert cfg["queue"]["delay_warning"] == 4 * 3600


@pytest.mark.parametrize("text, needle", [
    ('[server]\nhostnme = "x"\n', "server.hostnme"),
    ('[nonsense]\na = 1\n', "[nonsense]"),
    ('[smtp]\nmax_recipients = "ten"\n', "smtp.max_recipients"),
    ('[smtp]\nmax_recipients = -1\n', "smtp.max_recipients"),
    ('[listen]\nmx = "tcp:25"\n', "listen.mx"),
    ('[listen]\nmx = [25]\n', "listen.mx"),
    ('[outbound]\nrequire_tls = "yes"\n', "outbound.require_tls"),
    ('[queue]\nmax_age = "forever"\n', "queue.max_age"),
    ('[server]\nlog_level = "loud"\n', "server.log_level"),
    ('[server]\nhostname = 5\n', "server.hostname"),
    ('[tls]\ncertificate = "/nonexistent/cert.pem"\n', "tls.certificate and tls.private_key"),
    ('[server\n', "not valid TOML"),
])
def test_invalid_configs_name_the_key(tmp_path, text, needle):
    p = write(tmp_path, f'[server]\ndata_dir = "{tmp_path}/d"\n' + text if not text.startswith("[server]") else text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert needle in str(e.value)


def test_missing_certificate_file(tmp_path):
    p = write(tmp_path, f'[server]\ndata_dir = "{tmp_path}/d"\n[tls]\ncertificate = "/nonexistent/c.pem"\n'
                        'private_key = "/nonexistent/k.pem"\n')
    with pytest.raises(ConfigError, match=r"tls.certificate: file not found: /nonexistent/c.pem"):
        load(p)


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    p = write(tmp_path, f'[server]\ndata_dir = "{blocker}/data"\n')
    with pytest.raises(ConfigError, match=r"server.data_dir: cannot create"):
        load(p)


def test_readonly_data_dir(tmp_path):
    """A data dir that cannot be written. As root (CI) os.access says yes to everything, so
    the directory is made immutable (chattr +i) and mailhub's write probe must notice."""
    d = tmp_path / "ro"
    d.mkdir()
    p = write(tmp_path, f'[server]\ndata_dir = "{d}"\n')
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i not available on this file system")
    else:
        d.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"server.data_dir: not writable"):
            load(p)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(d)])
        d.chmod(0o755)


def test_relative_paths_are_relative_to_the_file(tmp_path):
    p = write(tmp_path, '[server]\ndata_dir = "var"\n')
    assert load(p).data_dir == tmp_path / "var"


def test_durations():
    assert parse_duration("5d", "k") == 432000
    assert parse_duration("30m", "k") == 1800
    assert parse_duration(12, "k") == 12
    with pytest.raises(ConfigError):
        parse_duration(True, "k")


def test_check_config_cli(tmp_path):
    p = write(tmp_path, f'[server]\ndata_dir = "{tmp_path}/d"\nhostname = "mx.example.org"\n'
                        '[smtp]\nmax_recipients = 7\n')
    r = subprocess.run([sys.executable, "-m", "mailhub", "check-config", "--config", str(p)],
                       capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert 'hostname = "mx.example.org"' in r.stdout
    assert "max_recipients = 7" in r.stdout
    assert "configuration OK" in r.stdout
    bad = write(tmp_path, '[smtp]\nmax_recipients = "x"\n')
    r = subprocess.run([sys.executable, "-m", "mailhub", "check-config", "--config", str(bad)],
                       capture_output=True, text=True, env=subprocess_env())
    assert r.returncode == 1
    assert r.stderr.strip().startswith("mailhub: error: smtp.max_recipients")
    assert "Traceback" not in r.stderr
