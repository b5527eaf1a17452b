"""Every admin CLI command and its error paths (exit 1, one clear line, nothing changed)."""
import sqlite3

import pytest

from tests.conftest import MailhubEnv


@pytest.fixture
def env(tmp_path):
    return MailhubEnv(tmp_path)


def fails(result, needle):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mailhub: error: ")


def test_domains(env):
    assert "domain example.com added" in env.cli("domain", "add", "Example.COM.").stdout.splitlines()
    env.cli("domain", "add", "bücher.example")
    assert env.cli("domain", "list").stdout.split() == ["example.com", "xn--bcher-kva.example"]
    fails(env.cli("domain", "add", "example.com", check=False), "already exists")
    fails(env.cli("domain", "add", "not a domain", check=False), "malformed domain")
    fails(env.cli("domain", "add", "[127.0.0.1]", check=False), "malformed domain")
    fails(env.cli("domain", "remove", "nothere.org", check=False), "no such domain")
    env.cli("domain", "remove", "BÜCHER.example")
    assert env.cli("domain", "list").stdout.split() == ["example.com"]


def test_domain_with_users_cannot_be_removed(env):
    env.add_user("a@example.com")
    fails(env.cli("domain", "remove", "example.com", check=False), "still has 1 user")
    assert env.cli("domain", "list").stdout.split() == ["example.com"]


def test_users(env):
    env.cli("domain", "add", "example.com")
    out = env.cli("user", "add", "Alice@Example.com", "--password-stdin", input="pw1\n").stdout
    assert "user alice@example.com added" in out
    md = env.maildir("alice@example.com")
    for folder in ("", ".Sent", ".Drafts", ".Trash", ".Junk", ".Archive"):
        for sub in ("cur", "new", "tmp"):
            assert (md / folder / sub).is_dir(), (folder, sub)
    assert env.cli("user", "list").stdout.split() == ["alice@example.com"]
    fails(env.cli("user", "add", "alice@EXAMPLE.com", "--password-stdin", input="x\n", check=False),
          "already exists")
    fails(env.cli("user", "add", "bob@other.org", "--password-stdin", input="x\n", check=False),
          "mailhub domain add other.org")
    fails(env.cli("user", "add", "no-at-sign", "--password-stdin", input="x\n", check=False),
          "malformed address")
    fails(env.cli("user", "add", "a b@example.com", "--password-stdin", input="x\n", check=False),
          "malformed address")
    fails(env.cli("user", "add", "../x@example.com", "--password-stdin", input="x\n", check=False),
          "malformed address")
    fails(env.cli("user", "add", "carol@example.com", "--password-stdin", input="\n", check=False),
          "must not be empty")
    assert env.cli("user", "list").stdout.split() == ["alice@example.com"]
    assert not env.maildir("carol@example.com").exists()
    # no terminal and no --password-stdin: a clear message instead of a hang
    fails(env.cli("user", "add", "dave@example.com", input="", check=False), "--password-stdin")


def test_passwords_are_argon2id_and_passwd_changes_them(env):
    env.add_user("alice@example.com", "first-pw")
    db = sqlite3.connect(env.data_dir / "directory.sqlite3")
    (h1,) = db.execute("SELECT password_hash FROM users").fetchone()
    assert h1.startswith("$argon2id$") and "first-pw" not in h1
    env.cli("user", "passwd", "ALICE@example.com", "--password-stdin", input="second-pw\n")
    (h2,) = db.execute("SELECT password_hash FROM users").fetchone()
    assert h2 != h1 and h2.startswith("$argon2id$")
    from mailhub.directory import open_directory

    d = open_directory(env.data_dir)
    assert d.check_password("alice@example.com", "second-pw") == "alice@example.com"
    assert d.check_password("alice@example.com", "first-pw") is None
    fails(env.cli("user", "passwd", "nobody@example.com", "--password-stdin", input="x\n", check=False),
          "no such user")
    fails(env.cli("user", "passwd", "alice@example.com", "--password-stdin", input="\n", check=False),
          "must not be empty")


def test_user_remove_keeps_mail_unless_purge(env):
    env.add_user("alice@example.com")
    env.add_user("bob@example.com")
    md = env.maildir("alice@example.com")
    (md / "new" / "123.M1P1Q1.host,S=5").write_bytes(b"hi\r\n\r\n")
    out = env.cli("user", "remove", "alice@example.com").stdout
    assert "mail kept in" in out
    kept = [p for p in md.parent.iterdir() if p.name.startswith("alice.removed-")]
    assert len(kept) == 1 and (kept[0] / "new" / "123.M1P1Q1.host,S=5").exists()
    assert env.cli("user", "list").stdout.split() == ["bob@example.com"]
    env.cli("user", "remove", "bob@example.com", "--purge")
    assert not env.maildir("bob@example.com").exists()
    fails(env.cli("user", "remove", "bob@example.com", check=False), "no such user")


def test_aliases_and_resolution(env):
    env.add_user("alice@example.com")
    env.add_user("bob@example.com")
    env.cli("alias", "add", "Sales@example.com", "alice@example.com", "bob@example.com")
    env.cli("alias", "add", "@example.com", "alice@example.com")
    env.cli("alias", "add", "fwd@example.com", "someone@elsewhere.org")
    out = env.cli("alias", "list").stdout.splitlines()
    assert out == ["@example.com -> alice@example.com",
                   "fwd@example.com -> someone@elsewhere.org",
                   "sales@example.com -> alice@example.com, bob@example.com"]
    fails(env.cli("alias", "add", "x@other.org", "alice@example.com", check=False),
          "mailhub domain add other.org")
    fails(env.cli("alias", "add", "alice@example.com", "bob@example.com", check=False), "is a user")
    fails(env.cli("alias", "add", "y@example.com", "not-an-address", check=False), "malformed address")
    fails(env.cli("alias", "remove", "nothing@example.com", check=False), "no such alias")

    from mailhub.directory import open_directory

    d = open_directory(env.data_dir)
    assert sorted(d.resolve("SALES@example.com")) == [("local", "alice@example.com"),
                                                      ("local", "bob@example.com")]
    assert d.resolve("bob+tag@example.com") == [("local", "bob@example.com")]
    assert d.resolve("unknown@example.com") == [("local", "alice@example.com")]  # catch-all
    assert d.resolve("fwd@example.com") == [("remote", "someone@elsewhere.org")]
    assert d.resolve('"bob@other.org"@example.com') == []
    assert d.resolve("bob%other.org@example.com") == []
    assert d.senders_for("bob@example.com") == {"bob@example.com", "sales@example.com"}
    env.cli("alias", "remove", "@example.com")
    assert d.resolve("unknown@example.com") == []


def test_unknown_command_and_help(env):
    r = env.cli("frobnicate", check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = env.cli("--help", check=False)
    assert r.returncode == 0 and "domain" in r.stdout and "user" in r.stdout


def test_cli_reads_the_same_config_as_the_daemon(env, tmp_path):
    env.cli("domain", "add", "example.com")
    other = MailhubEnv(tmp_path / "other")
    assert other.cli("domain", "list").stdout.strip() == ""
    assert (env.data_dir / "directory.sqlite3").exists()
