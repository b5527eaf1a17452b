"""The harness's pure parts: peers' output parsers, the IMAP response splitter, the profile
summary, ratios, and generated mailboxes being what mailhub's store and Dovecot expect."""
from __future__ import annotations

import pytest

from bench.clients.imapwire import split_response
from bench.maildir_gen import count_messages, fill, make_message, message_name, clear
from bench.peers.smtptools import parse_sink_counter, parse_source_errors
from bench.profiling import parse_collapsed
from bench.stats import CaseResult


def test_sink_counter_takes_the_last_complete_counter():
    # bytes as smtp-sink -c writes them: \r-separated counters, the last one maybe cut off
    out = b"sess=0 quit=0 mesg=1\rsess=1 quit=1 mesg=1\rsess=3 quit=2 mesg=17\rsess=3 qu"
    assert parse_sink_counter(out) == {"sess": 3, "quit": 2, "mesg": 17}
    assert parse_sink_counter(b"") == {"sess": 0, "quit": 0, "mesg": 0}


def test_source_errors_are_found_and_silence_is_success():
    text = ("smtp-source: fatal: connect to 127.0.0.1:1: Connection refused\n"
            "smtp-source[123]: warning: 127.0.0.1:25: lost connection\n"
            "some other line\n")
    assert parse_source_errors(text) == [
        "smtp-source: fatal: connect to 127.0.0.1:1: Connection refused",
        "smtp-source[123]: warning: 127.0.0.1:25: lost connection"]
    assert parse_source_errors("") == []


def test_split_response_handles_literals_and_partial_data():
    data = (b'* 1 FETCH (ENVELOPE ("d" {8}\r\nA1 OK x\r\n))\r\n'
            b"* 2 EXISTS\r\nA1 OK FETCH done\r\nA2 rest")
    lines, status, used = split_response(data, b"A1")
    assert status == b"A1 OK FETCH done\r\n"
    assert lines[0] == b'* 1 FETCH (ENVELOPE ("d" {8}\r\nA1 OK x\r\n))\r\n'
    assert lines[1] == b"* 2 EXISTS\r\n"
    assert data[used:] == b"A2 rest"
    # the tag inside the literal must not end the response early; cut data is incomplete
    for cut in (10, 30, len(data) - 20):
        assert split_response(data[:cut], b"A1") is None


def test_split_response_continuation():
    lines, status, used = split_response(b"+ idling\r\n", b"A5")
    assert status == b"+ idling\r\n" and lines == []


def test_collapsed_profile_leaves_out_idle_and_counts_areas():
    text = "\n".join([
        "run (twisted/application/app.py:1);doPoll (twisted/internet/epollreactor.py:2) 0",
        "run (twisted/application/app.py:1);EPollReactor.doPoll (twisted/internet/epollreactor.py:244) 50",
        "run (twisted/application/app.py:1);Proto.lineReceived (/repo/mailhub/imapserver/protocol.py:10);"
        "fsync_file (/repo/mailhub/store/commit.py:5) 30",
        "run (twisted/application/app.py:1);Proto.lineReceived (/repo/mailhub/imapserver/protocol.py:10) 20",
    ])
    self_c, incl, areas, busy, idle = parse_collapsed(text)
    assert (busy, idle) == (50, 50)
    assert self_c["fsync_file (store/commit.py)"] == 30
    assert incl["Proto.lineReceived (imapserver/protocol.py)"] == 50
    assert areas["mailhub/store"] == 30 and areas["mailhub/imapserver"] == 20


def test_ratio_means_mailhub_faster_above_one():
    thr = CaseResult("smtp", "c", "msg/s", True, "postfix", mailhub=[200, 100, 300],
                     peer_values=[100, 100, 100])
    assert thr.ratio == pytest.approx(2.0)
    t = CaseResult("imap", "c", "s", False, "dovecot", mailhub=[0.5, 0.5, 0.7],
                   peer_values=[1.0, 1.2, 0.9])
    assert t.ratio == pytest.approx(2.0)
    assert CaseResult("x", "c", "s", False, "p").ratio is None
    j = t.to_json()
    assert j["mailhub_summary"] == {"median": 0.5, "min": 0.5, "max": 0.7, "n": 3}


@pytest.mark.parametrize("size", [300, 4096, 102400, 4097])
def test_generated_messages_have_the_size_and_crlf(size):
    m = make_message(3, size)
    if size >= 1000:
        assert len(m) == size
    else:  # smaller than the headers: headers and one body line
        assert size < len(m) < size + 200
    assert b"\n" not in m.replace(b"\r\n", b"")
    assert m.endswith(b"\r\n") and b"\r\n\r\n" in m


def test_generated_maildir_is_what_mailhubs_store_reads(tmp_path):
    from mailhub.store.maildir import MailStore
    store = MailStore(tmp_path / "mail")
    addr = "user@bench.example"
    store.create_user(addr)
    other = tmp_path / "copy"
    fill([store.user_dir(addr), other], 25, 4096, to=addr)
    infos = store.folder(addr, "INBOX").scan()
    assert len(infos) == 25 == count_messages(other)
    assert all(i.size == 4096 for i in infos)
    seen = [i for i in infos if "S" in i.flags]
    assert len(seen) == 3  # every tenth message: 0, 10, 20
    # identical bytes and names in both copies
    a = sorted(p.name for p in (store.user_dir(addr) / "cur").iterdir())
    b = sorted(p.name for p in (other / "cur").iterdir())
    assert a == b and a[0] == message_name(0, len(make_message(0, 4096, addr)), "S")
    clear(other)
    assert count_messages(other) == 0


def test_dovecot_scheme_is_argon2id_when_available_else_the_strongest():
    from bench.peers.dovecot import pick_scheme
    assert pick_scheme(["SHA512-CRYPT", "PLAIN", "ARGON2ID", "BLF-CRYPT"]) == "ARGON2ID"
    assert pick_scheme(["PLAIN", "SHA512-CRYPT", "BLF-CRYPT"]) == "BLF-CRYPT"
    assert pick_scheme(["PLAIN", "SHA512-CRYPT", "MD5-CRYPT"]) == "SHA512-CRYPT"
    assert pick_scheme([]) == "PLAIN"


def test_dovecot_argon2id_field_has_mailhubs_parameters_and_verifies():
    from bench.peers.dovecot import hash_for_dovecot
    from mailhub.directory.passwords import verify_password
    field = hash_for_dovecot("ARGON2ID", "pw-1")
    assert field.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert ":" not in field  # a passwd-file field
    phc = field[len("{ARGON2ID}"):]
    assert verify_password(phc, "pw-1") and not verify_password(phc, "pw-2")
    assert hash_for_dovecot("PLAIN", "pw-1") == "{PLAIN}pw-1"


def test_alternate_takes_the_larger_of_rounds_and_min_rounds():
    from bench.context import Bench
    b = Bench(quick=True, rounds=3)
    try:
        calls = []
        out = b.alternate([("a", lambda: calls.append("a") or 1.0),
                           ("b", lambda: calls.append("b") or 2.0)], min_rounds=5)
        assert calls == ["a", "b"] * 5 and out == {"a": [1.0] * 5, "b": [2.0] * 5}
        out = b.alternate([("a", lambda: 1.0)])
        assert out == {"a": [1.0] * 3}
    finally:
        b.cleanup()


def _split_line_by_line(data: bytes, tag: bytes):
    """Reference: the plain per-line reading split_response must agree with."""
    import re
    lit = re.compile(rb"\{(\d+)\+?\}\r\n$")
    pos, lines, cur = 0, [], b""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = data[pos:eol + 2]
        pos = eol + 2
        m = lit.search(line)
        if m:
            n = int(m.group(1))
            if len(data) - pos < n:
                return None
            cur += line + data[pos:pos + n]
            pos += n
            continue
        cur += line
        if cur.startswith(tag + b" ") or cur.startswith(b"+"):
            return lines, cur, pos
        lines.append(cur)
        cur = b""


def test_split_response_agrees_with_line_by_line_reading():
    import random
    rnd = random.Random(7)
    pieces = [b"* 1 EXISTS\r\n", b"* OK [UIDNEXT 5] x\r\n", b"* 3 FETCH (FLAGS (\\Seen))\r\n",
              b"A1 OK inside? no\r\n", b"* SEARCH 1 2 3\r\n", b"+ go ahead\r\n",
              b"A10 OK other tag\r\n", b"* OK bare\nLF and\rCR\r\n", b"* 2 FETCH (BODY[] {%d}\r\n"]
    literal_bodies = [b"", b"A1 OK fake\r\n", b"line\nbare LF\r", b"{3}\r\nabc", b"+ plus\r\n",
                      b"x" * 50]
    for _ in range(3000):
        parts = []
        for _ in range(rnd.randint(0, 8)):
            p = rnd.choice(pieces)
            if b"%d" in p:
                body = rnd.choice(literal_bodies)
                p = p % len(body) + body + b")\r\n"
            parts.append(p)
        parts.append(rnd.choice([b"A1 OK done\r\n", b"A1 NO [x] no\r\n", b"+ idling\r\n", b""]))
        data = b"".join(parts) + rnd.choice([b"", b"A2 next", b"* 9 EXISTS\r\n"])
        for cut in {len(data), rnd.randint(0, len(data))}:
            assert split_response(data[:cut], b"A1") == _split_line_by_line(data[:cut], b"A1"), data[:cut]
