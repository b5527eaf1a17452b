"""The running server sees directory changes made by the CLI at once (no restart), and
authentication goes through the shared portal: a user added, re-passworded and removed
while the server runs is accepted/refused accordingly (checked over POP3)."""
import poplib

import pytest

from tests.conftest import MailhubServer


def pop_login(port, user, password):
    c = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        c.user(user)
        c.pass_(password)
        c.quit()
        return True
    except poplib.error_proto:
        return False


def test_cli_changes_seen_without_restart(mh_env):
    pytest.importorskip("mailhub.pop3server")
    mh_env.cli("domain", "add", "example.com")
    server = MailhubServer(mh_env).start()
    try:
        port = server.port("pop3")
        assert not pop_login(port, "late@example.com", "pw-one")
        mh_env.cli("user", "add", "late@example.com", "--password-stdin", input="pw-one\n")
        assert pop_login(port, "late@example.com", "pw-one")
        mh_env.cli("user", "passwd", "late@example.com", "--password-stdin", input="pw-two\n")
        assert not pop_login(port, "late@example.com", "pw-one")
        assert pop_login(port, "late@example.com", "pw-two")
        mh_env.cli("user", "remove", "late@example.com")
        assert not pop_login(port, "late@example.com", "pw-two")
        assert "pw-one" not in server.log() and "pw-two" not in server.log()
    finally:
        server.stop()
