"""Sans-IO pieces of the outbound path, without sockets: SMTP replies, EHLO, DATA encoding,
envelopes and retry schedule, SMTPUTF8 detection, DSN construction, route parsing."""
from __future__ import annotations

import email
import email.policy

import pytest

from mailhub.dns.resolver import parse_nameserver
from mailhub.queue.bounce import build_dsn
from mailhub.queue.envelope import (
    FAILED, Envelope, Recipient, header_section, needs_smtputf8, retry_delay, wire_address,
)
from mailhub.queue.routing import parse_hostport
from mailhub.queue.smtpwire import (
    Reply, ReplyError, ReplyParser, encode_data, max_size, parse_ehlo, to_crlf,
)


def feed(lines):
    p = ReplyParser()
    out = [p.feed(line) for line in lines]
    return out


def test_reply_parser_single_and_multiline():
    [r] = feed([b"250 2.1.0 Ok"])
    assert r.code == 250 and r.enhanced == "2.1.0" and r.positive and str(r) == "250 2.1.0 Ok"
    out = feed([b"250-mx.example", b"250-PIPELINING", b"250-SIZE 1000", b"250 8BITMIME"])
    assert out[:3] == [None, None, None]
    ext = parse_ehlo(out[3])
    assert ext == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""}
    assert max_size(ext) == 1000 and max_size({"SIZE": ""}) is None
    [r] = feed([b"451"])  # bare code, no text
    assert r.transient and r.status() == "4.0.0"


def test_reply_status_ignores_mismatched_enhanced_code():
    r = Reply(550, ["4.1.1 odd server"])
    assert r.status() == "5.0.0"
    assert Reply(421, ["4.7.0 busy"]).status() == "4.7.0"


@pytest.mark.parametrize("line", [b"hello", b"25", b"250x ok", b"999 no", b"abc def"])
def test_reply_parser_rejects_garbage(line):
    with pytest.raises(ReplyError):
        ReplyParser().feed(line)


def test_reply_parser_rejects_code_change_in_multiline():
    p = ReplyParser()
    p.feed(b"250-first")
    with pytest.raises(ReplyError):
        p.feed(b"251 second")


def test_old_style_auth_keyword():
    p = ReplyParser()
    p.feed(b"250-hi")
    r = p.feed(b"250 AUTH=LOGIN PLAIN")
    assert parse_ehlo(r)["AUTH"].split() == ["LOGIN", "PLAIN"]


def test_encode_data_dot_stuffing_and_line_ends():
    assert encode_data(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert encode_data(b"no final newline") == b"no final newline\r\n.\r\n"
    assert encode_data(b"bare\nlf\n.dot\n") == b"bare\r\nlf\r\n..dot\r\n.\r\n"
    assert to_crlf(b"a\r\nb\nc") == b"a\r\nb\r\nc"


def test_envelope_round_trip_and_retry_schedule():
    env = Envelope(id="X1", sender="", recipients=[Recipient("a@b.test"), Recipient("é@c.test")])
    env.recipients[1].state = FAILED
    back = Envelope.from_json(env.to_json())
    assert back == env and [r.addr for r in back.pending()] == ["a@b.test"]
    sched = [60, 300, 900]
    assert [retry_delay(sched, n) for n in (1, 2, 3, 4, 9)] == [60, 300, 900, 900, 900]


def test_smtputf8_detection():
    assert needs_smtputf8("josé@x.test", ["a@b.test"], b"Subject: x\r\n\r\n")
    assert needs_smtputf8("a@x.test", ["a@b.test"], "Subject: café\r\n\r\n".encode())
    assert not needs_smtputf8("a@x.test", ["a@b.test"], b"Subject: plain\r\n\r\n")
    # legacy 8-bit headers that are not UTF-8 do not require SMTPUTF8
    assert not needs_smtputf8("a@x.test", ["a@b.test"], b"Subject: caf\xe9\r\n\r\n")
    assert header_section(b"A: 1\r\nB: 2\r\n\r\nbody") == b"A: 1\r\nB: 2\r\n"
    # an IDN domain goes out as its A-label; only a UTF-8 local part needs SMTPUTF8
    assert wire_address("a@bücher.test") == "a@xn--bcher-kva.test"
    assert wire_address("josé@bücher.test") == "josé@xn--bcher-kva.test"
    assert wire_address("") == ""
    assert not needs_smtputf8("", [wire_address("a@bücher.test")], b"Subject: x\r\n\r\n")


def test_dsn_structure():
    env = Envelope(id="Q1", sender="alice@example.com",
                   recipients=[Recipient("x@far.test", FAILED, "5.1.1",
                                         "550 5.1.1 no such user", "mx.far.test")])
    raw = build_dsn(env, env.recipients, b"Subject: hi\r\nFrom: alice@example.com\r\n",
                    "mail.example.com")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    text, status, headers = msg.get_payload()
    assert "x@far.test" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    s = status.as_string()
    for field in ("Reporting-MTA: dns; mail.example.com", "Final-Recipient: rfc822; x@far.test",
                  "Action: failed", "Status: 5.1.1", "Remote-MTA: dns; mx.far.test",
                  "Diagnostic-Code: smtp; 550 5.1.1 no such user"):
        assert field in s
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: hi" in headers.as_string()
    delayed = build_dsn(env, env.recipients, b"Subject: hi\r\n", "h", "delayed", 1e9)
    assert b"Action: delayed" in delayed and b"Will-Retry-Until:" in delayed


def test_route_and_nameserver_parsing():
    assert parse_hostport("127.0.0.1:2626", 25) == ("127.0.0.1", 2626)
    assert parse_hostport("[mx.example.net]:587", 25) == ("mx.example.net", 587)
    assert parse_hostport("mx.example.net", 25) == ("mx.example.net", 25)
    assert parse_hostport("[::1]:2525", 25) == ("::1", 2525)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)


def test_incremental_encoder_matches_encode_data():
    import random

    from mailhub.queue.smtpwire import DataEncoder

    rnd = random.Random(7)
    pieces = [b".", b"..", b"a", b"\r\n", b"\n", b".x\r\n", b"\r", b"line\r\n"]
    for _ in range(2000):
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 40)))
        enc, out, i = DataEncoder(), b"", 0
        while i < len(data):
            n = rnd.randint(1, 7)
            out += enc.feed(data[i:i + n])
            i += n
        assert out + enc.finish() == encode_data(data), data


def test_message_file_chunks(tmp_path):
    from mailhub.queue.smtpwire import MessageFile

    p = tmp_path / "m"
    body = b"".join(b".%d\r\n" % i for i in range(50000))
    p.write_bytes(body)
    mf = MessageFile(b"DKIM-Signature: x\r\n", p)
    assert mf.size == len(body) + 19 and not mf.is_8bit()
    chunks = list(mf.encoded_chunks())
    assert len(chunks) > 2
    assert b"".join(chunks) == encode_data(b"DKIM-Signature: x\r\n" + body)
    assert mf.head(100).startswith(b"DKIM-Signature: x\r\n.0\r\n")
