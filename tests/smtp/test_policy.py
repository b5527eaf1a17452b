"""Relay policy and sender check against a real SQLite directory (no sockets)."""
import pytest

from mailhub.directory import open_directory
from mailhub.smtpserver.parser import SMTPError
from mailhub.smtpserver.policy import recipient_targets, sender_allowed


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    d = open_directory(tmp_path_factory.mktemp("dir"))
    d.add_domain("example.com")
    d.add_user("alice@example.com", "pw")
    d.add_user("bob@example.com", "pw")
    d.add_alias("sales@example.com", ["alice@example.com", "bob@example.com"])
    d.add_alias("ext@example.com", ["friend@elsewhere.example"])
    d.add_alias("postmaster@example.com", ["bob@example.com"])
    return d


def refused(directory, address, authenticated=False):
    with pytest.raises(SMTPError) as e:
        recipient_targets(directory, address, authenticated)
    return e.value.code, e.value.enhanced


def test_recipients_resolve_or_are_refused(directory):
    assert recipient_targets(directory, "alice@example.com", False) == (["alice@example.com"], [])
    assert recipient_targets(directory, "Alice+x@EXAMPLE.com.", False) == (["alice@example.com"], [])
    local, remote = recipient_targets(directory, "sales@example.com", False)
    assert sorted(local) == ["alice@example.com", "bob@example.com"] and remote == []
    assert recipient_targets(directory, "ext@example.com", False) == ([], ["friend@elsewhere.example"])
    assert recipient_targets(directory, "Postmaster", False) == (["bob@example.com"], [])
    assert refused(directory, "nobody@example.com") == (550, "5.1.1")
    assert refused(directory, "nobody@example.com", authenticated=True) == (550, "5.1.1")
    for trick in ("x@elsewhere.example", "x@[127.0.0.1]", "x%elsewhere.example@example.com"):
        assert refused(directory, trick)[0] in (550, 554), trick
    # authenticated users may send anywhere; the address goes to the queue as given
    assert recipient_targets(directory, "x@elsewhere.example", True) == ([], ["x@elsewhere.example"])


def test_sender_check(directory):
    assert sender_allowed(directory, "alice@example.com", "alice@example.com")
    assert sender_allowed(directory, "alice@example.com", "ALICE@Example.COM")
    assert sender_allowed(directory, "alice@example.com", "alice+list@example.com")
    assert sender_allowed(directory, "alice@example.com", "sales@example.com")  # resolves to her
    assert sender_allowed(directory, "bob@example.com", "sales@example.com")
    assert not sender_allowed(directory, "alice@example.com", "bob@example.com")
    assert not sender_allowed(directory, "alice@example.com", "ext@example.com")
    assert not sender_allowed(directory, "alice@example.com", "alice@elsewhere.example")
    assert not sender_allowed(directory, "alice@example.com", "+x@example.com")
    assert not sender_allowed(directory, "alice@example.com", '"alice@example.com"@evil.example')
