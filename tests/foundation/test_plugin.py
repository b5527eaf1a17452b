"""Packaging and launch: the twistd plugin is installed and found, the server starts and
stops as a real ``twistd -n mailhub`` process, the embedded defaults work, errors are clear."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import pytest

from tests.conftest import REPO, TWISTD, MailhubEnv, MailhubServer, subprocess_env


def available_listener() -> str:
    """A listener whose protocol package is in this build (the test needs one that binds)."""
    import importlib

    from mailhub.service import PROTOCOLS

    for name, ref in PROTOCOLS.items():
        try:
            importlib.import_module(ref.partition(":")[0])
            return name
        except ModuleNotFoundError:
            continue
    pytest.skip("no protocol package in this build yet")


def twistd(*args, cwd, env=None, timeout=60):
    return subprocess.run([*TWISTD, *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_twistd_lists_the_plugin(tmp_path):
    r = twistd("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "mailhub" in r.stdout and "mailhub mail server" in r.stdout
    r = twistd("mailhub", "--help", cwd=tmp_path)
    assert "--config" in r.stdout


def test_wheel_contains_the_plugin_file(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("mailhub-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/mailhub_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names  # must not shadow Twisted's own
    assert "mailhub/store/maildir.py" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "mailhub = mailhub.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


@pytest.mark.parametrize("cache", [b"garbage, not a pickle", None])
def test_stale_dropin_cache_does_not_hide_the_plugin(tmp_path, cache):
    """A plugin dir with a corrupt dropin.cache, or one written before mailhub_plugin.py was
    installed, must still yield the mailhub plugin."""
    site = tmp_path / "site"
    plugdir = site / "twisted" / "plugins"
    plugdir.mkdir(parents=True)
    if cache is None:
        # a cache made while the directory held another plugin only, then mailhub is added
        (plugdir / "other_plugin.py").write_text("")
        env = subprocess_env({"PYTHONPATH": str(site)})
        subprocess.run([sys.executable, "-c", "from twisted.plugin import getPlugins, IPlugin;"
                        "import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"],
                       env=env, check=True, cwd=tmp_path)
        assert (plugdir / "dropin.cache").exists()
        old = time.time() + 60  # a cache that even looks newer than the plugin file
        os.utime(plugdir / "dropin.cache", (old, old))
    else:
        (plugdir / "dropin.cache").write_bytes(cache)
    shutil.copy(REPO / "twisted" / "plugins" / "mailhub_plugin.py", plugdir)
    env = subprocess_env({"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])})
    r = twistd("--help", cwd=tmp_path, env=env)
    assert "mailhub mail server" in r.stdout, r.stdout + r.stderr


def test_start_and_stop_as_a_real_process(mh_env):
    mh_env.add_user("alice@example.com")
    server = MailhubServer(mh_env).start()
    run_file = mh_env.data_dir / "run" / "listeners.json"
    data = json.loads(run_file.read_text())
    assert data["pid"] == server.proc.pid
    for name, ports in server.ports.items():
        for port in ports:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    rc = server.stop()
    assert rc in (0, -15), server.log()
    log = server.log()
    assert "Server Shut Down" in log
    assert "Traceback" not in log
    assert not run_file.exists()


def test_embedded_defaults_first_start(tmp_path):
    """No --config: data in ./mailhub-data, a self-signed certificate, a what-next line."""
    for port in (2525, 2587, 2465, 2110, 2995, 2143, 2993):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} in use on this machine (another mailhub running?)")
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([*TWISTD, "--nodaemon", "--pidfile=", "mailhub"], cwd=tmp_path,
                         env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        run_file = tmp_path / "mailhub-data" / "run" / "listeners.json"
        deadline = time.monotonic() + 30
        while not run_file.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert run_file.exists(), (tmp_path / "log").read_text()
        ports = json.loads(run_file.read_text())["listeners"]
        expected = {"mx": 2525, "submission": 2587, "submissions": 2465, "pop3": 2110,
                    "pop3s": 2995, "imap": 2143, "imaps": 2993}
        for name, got in ports.items():
            assert got == [expected[name]]
        assert (tmp_path / "mailhub-data" / "tls" / "selfsigned-cert.pem").exists()
        key = tmp_path / "mailhub-data" / "tls" / "selfsigned-key.pem"
        assert key.stat().st_mode & 0o077 == 0
    finally:
        p.terminate()
        p.wait(20)
        log.close()
    text = (tmp_path / "log").read_text()
    assert "generated a self-signed TLS certificate" in text
    assert "mailhub domain add example.com" in text and "mailhub user add" in text


def test_bad_config_exits_with_one_clear_line(tmp_path):
    env = MailhubEnv(tmp_path)
    env.config_path.write_text(env.config_path.read_text() + "\n[smtp]\nmax_recipients = \"many\"\n")
    r = twistd("--nodaemon", "--pidfile=", "mailhub", "--config", str(env.config_path), cwd=tmp_path)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "mailhub: configuration error: smtp.max_recipients" in out
    assert "Traceback" not in out


def test_invalid_endpoint_is_reported(tmp_path):
    name = available_listener()
    env = MailhubEnv(tmp_path)
    env.write_config(listeners={name: ["bogus:1234"]})
    r = twistd("--nodaemon", "--pidfile=", "mailhub", "--config", str(env.config_path), cwd=tmp_path)
    assert r.returncode != 0
    assert f"listen.{name}: invalid endpoint 'bogus:1234'" in r.stdout + r.stderr


def test_port_in_use_names_listener_and_port(tmp_path):
    name = available_listener()
    env = MailhubEnv(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        env.write_config(listeners={name: [f"tcp:{port}:interface=127.0.0.1"]})
        r = twistd("--nodaemon", "--pidfile=", "mailhub", "--config", str(env.config_path), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"cannot start listener {name} on tcp:{port}:interface=127.0.0.1" in out
    assert "Address already in use" in out or "address already in use" in out.lower()
    assert "Traceback" not in out
