"""Several sessions on one mailbox, IDLE push (IMAP APPEND, SMTP delivery, flag changes,
expunges) within 100 ms, out-of-process changes seen at the next command, restart stability."""
import imaplib
import os
import re
import select
import smtplib
import socket
import threading
import time

import pytest

from tests.conftest import MailhubEnv, MailhubServer
from tests.imap.conftest import ALICE, BOB, make_message, unique


def idle_start(m: imaplib.IMAP4, tag: bytes = b"i1"):
    m.send(tag + b" IDLE\r\n")
    assert m.readline().startswith(b"+ ")


def read_until(m: imaplib.IMAP4, pred, timeout: float = 5.0) -> list[bytes]:
    """Read lines until pred(line); returns them."""
    m.sock.settimeout(timeout)
    out = []
    while True:
        line = m.readline()
        assert line, "connection closed"
        out.append(line)
        if pred(line):
            return out


def idle_done(m: imaplib.IMAP4, tag: bytes = b"i1") -> list[bytes]:
    m.send(b"DONE\r\n")
    return read_until(m, lambda l: l.startswith(tag + b" "))


def test_sessions_see_each_others_changes(imap_server):
    name = unique("C")
    a = imap_server.imaplib()
    a.create(name)
    for i in range(3):
        a.append(name, None, None, make_message(f"c{i}"))
    b = imap_server.imaplib()
    a.select(name)
    b.select(name)
    a.store("1", "+FLAGS", "(\\Flagged)")
    typ, _ = b.noop()
    fetches = b.untagged_responses.pop("FETCH", [])
    assert any(re.match(rb"1 \(FLAGS \(\\Flagged", f) for f in fetches)
    # new mail: EXISTS at the next command
    a.append(name, None, None, make_message("c3"))
    b.noop()
    assert b.untagged_responses.pop("EXISTS")[-1] == b"4"
    # expunge by A: B is told at NOOP, but not during a sequence-number FETCH
    a.store("2", "+FLAGS", "(\\Deleted)")
    a.expunge()
    typ, data = b.fetch("2", "(FLAGS)")
    assert typ == "OK"  # message 2 is a ghost for B until it is told
    assert "EXPUNGE" not in b.untagged_responses
    b.noop()
    assert b.untagged_responses.pop("EXPUNGE") == [b"2"]
    typ, data = b.fetch("1:*", "(UID)")
    assert [int(re.search(rb"UID (\d+)", x).group(1)) for x in data] == [1, 3, 4]
    a.logout()
    b.logout()


def test_idle_push_on_append_flags_expunge(imap_server):
    name = unique("I")
    a = imap_server.imaplib()
    a.create(name)
    a.append(name, None, None, make_message("first"))
    b = imap_server.imaplib()
    b.select(name)
    idle_start(b)
    # the push must arrive within 100 ms of the APPEND's reply; best of 3 so a busy CI
    # machine's scheduling hiccup does not fail the run (every push must still arrive < 1 s)
    latencies = []
    for n in range(3):
        a.append(name, None, None, make_message(f"pushed{n}"))
        t_sent = time.monotonic()
        lines = read_until(b, lambda l: l.endswith(b"EXISTS\r\n"))
        latencies.append(time.monotonic() - t_sent)
        assert lines[-1] == b"* %d EXISTS\r\n" % (n + 2)
    assert min(latencies) < 0.1 and max(latencies) < 1.0, latencies
    a.select(name)
    a.store("1", "+FLAGS", "(\\Seen)")
    lines = read_until(b, lambda l: b"FETCH" in l)
    assert lines[-1].startswith(b"* 1 FETCH (FLAGS (\\Seen")
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    lines = read_until(b, lambda l: b"EXPUNGE" in l)
    assert lines[-1] == b"* 1 EXPUNGE\r\n"
    out = idle_done(b)
    assert out[-1].startswith(b"i1 OK")
    assert b.noop()[0] == "OK"
    a.logout()
    b.logout()


def test_idle_push_on_smtp_delivery(imap_server):
    if "mx" not in imap_server.server.ports:
        pytest.skip("no SMTP listener in this build")
    b = imap_server.imaplib(user=BOB)
    b.select("INBOX")
    exists = int(b.untagged_responses.get("EXISTS", [b"0"])[-1])
    idle_start(b)
    s = smtplib.SMTP("127.0.0.1", imap_server.server.port("mx"), timeout=20)
    latencies = []
    for n in range(3):  # best of 3, as above
        s.sendmail("someone@example.org", ["bob@example.com"],
                   make_message("via smtp", to="bob@example.com"))
        t_done = time.monotonic()
        lines = read_until(b, lambda l: l.endswith(b"EXISTS\r\n"), timeout=10)
        latencies.append(time.monotonic() - t_done)
        assert lines[-1] == b"* %d EXISTS\r\n" % (exists + 1 + n)
    s.quit()
    assert min(latencies) < 0.1 and max(latencies) < 1.0, latencies
    idle_done(b)
    typ, data = b.fetch(str(exists + 1), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"via smtp" in data[0][1]
    b.logout()


def test_out_of_process_delivery_seen_at_next_command(imap_server):
    name = unique("O")
    a = imap_server.imaplib()
    a.create(name)
    a.select(name)
    md = imap_server.env.maildir("alice@example.com", name)
    (md / "tmp" / "1700000000.M1P1Q1.ext").write_bytes(make_message("dropped"))
    os.rename(md / "tmp" / "1700000000.M1P1Q1.ext", md / "new" / "1700000000.M1P1Q1.ext")
    a.noop()
    assert a.untagged_responses.pop("EXISTS")[-1] == b"1"
    # a flag set by another program (mutt, a script) is noticed too
    os.rename(md / "new" / "1700000000.M1P1Q1.ext", md / "cur" / "1700000000.M1P1Q1.ext:2,F")
    a.noop()
    assert any(b"\\Flagged" in f for f in a.untagged_responses.pop("FETCH"))
    a.logout()


def test_many_parallel_sessions(imap_server):
    name = unique("P")
    imap_server.imaplib().create(name)
    errors = []

    def worker(i):
        try:
            m = imap_server.imaplib()
            for j in range(5):
                assert m.append(name, None, None, make_message(f"w{i}-{j}"))[0] == "OK"
            m.select(name)
            m.store("1:*", "+FLAGS", "(\\Seen)")
            m.fetch("1:*", "(UID FLAGS)")
            m.logout()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    m = imap_server.imaplib()
    m.select(name)
    typ, data = m.uid("SEARCH", "ALL")
    uids = [int(x) for x in data[0].split()]
    assert uids == list(range(1, 41))  # 40 messages, UIDs strictly ascending, none reused
    m.logout()


def test_restart_keeps_uids_and_flags(tmp_path):
    env = MailhubEnv(tmp_path, extra_toml="[imap]\nauth_failure_delay = 0.0\n")
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.add_user(*ALICE)
    srv = MailhubServer(env).start()
    m = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
    m.login(*ALICE)
    for i in range(4):
        m.append("INBOX", None, None, make_message(f"r{i}"))
    m.select("INBOX")
    m.store("2", "+FLAGS", "(\\Seen Custom)")
    m.store("3", "+FLAGS", "(\\Deleted)")
    m.expunge()
    validity = m.untagged_responses.get("UIDVALIDITY", [b""])[-1]
    before = m.fetch("1:*", "(UID FLAGS)")[1]
    m.logout()
    srv.stop()
    srv = MailhubServer(env).start()
    try:
        m = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
        m.login(*ALICE)
        m.select("INBOX")
        assert m.untagged_responses["UIDVALIDITY"][-1] == validity
        assert int(m.untagged_responses["UIDNEXT"][-1]) == 5
        after = m.fetch("1:*", "(UID FLAGS)")[1]
        assert [re.sub(rb" ?\\Recent", b"", x) for x in after] == \
            [re.sub(rb" ?\\Recent", b"", x) for x in before]
        m.append("INBOX", None, None, make_message("after restart"))
        typ, data = m.uid("SEARCH", "ALL")
        assert data[0].split() == [b"1", b"2", b"4", b"5"]
        m.logout()
        # the uidlist lost: UIDVALIDITY changes (and only then)
        os.unlink(env.maildir("alice@example.com") / "mailhub-uidlist")
    finally:
        srv.stop()
    srv = MailhubServer(env).start()
    try:
        m = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
        m.login(*ALICE)
        m.select("INBOX")
        assert m.untagged_responses["UIDVALIDITY"][-1] != validity
        assert m.fetch("1:*", "(FLAGS)")[0] == "OK"
        m.logout()
    finally:
        srv.stop()


def test_condstore_and_qresync_updates_from_other_sessions(imap_server):
    name = unique("Q")
    a = imap_server.imaplib()
    a.create(name)
    for i in range(3):
        a.append(name, None, None, make_message(f"q{i}"))
    a.select(name)
    b = imap_server.raw()
    b.cmd(b"LOGIN alice@example.com pw-alice")
    assert b.cmd(b"ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
    b.cmd(b"SELECT " + name.encode())
    a.store("2", "+FLAGS", "(\\Answered)")
    out = b.cmd(b"NOOP")
    assert any(re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", l) for l in out), out
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    out = b.cmd(b"NOOP")
    assert b"* VANISHED 1" in out
    b.send(b"i IDLE\r\n")
    assert b.line() == b"+ idling"
    a.store("1", "+FLAGS", "(\\Deleted)")  # message UID 2 is now number 1 for A
    assert re.match(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Answered \\Deleted\) MODSEQ", b.line())
    a.expunge()
    assert b.line() == b"* VANISHED 2"
    b.send(b"DONE\r\n")
    assert b.until_tag(b"i")[-1] == b"i OK Idle completed"
    b.close()
    a.logout()


def test_flags_and_deletions_shared_with_pop3(imap_server):
    import poplib
    if "pop3" not in imap_server.server.ports:
        pytest.skip("no POP3 listener in this build")
    user = ("carol@example.com", "pw-carol")
    imap_server.env.add_user(*user)
    m = imap_server.imaplib(user=user)
    for i in range(3):
        m.append("INBOX", None, None, make_message(f"pop{i}", to=user[0]))
    m.select("INBOX")
    m.store("3", "+FLAGS", "(\\Flagged)")
    p = poplib.POP3("127.0.0.1", imap_server.server.port("pop3"), timeout=20)
    p.user(user[0])
    p.pass_(user[1])
    assert p.stat()[0] == 3
    p.retr(1)
    p.dele(2)
    p.quit()
    # IMAP sees POP3's \Seen (file name info) and deletion at its next command
    m.noop()
    assert m.untagged_responses.pop("EXPUNGE", None) == [b"2"]
    assert any(f.startswith(b"1 (FLAGS (\\Seen") for f in m.untagged_responses.pop("FETCH"))
    typ, data = m.fetch("1:*", "(UID FLAGS)")
    assert len(data) == 2
    assert b"\\Seen" in data[0] and b"UID 1" in data[0]
    assert b"\\Flagged" in data[1] and b"UID 3" in data[1]
    m.logout()
