"""Pure SMTP syntax: command lines, paths, parameters, SASL payloads (no sockets)."""
import base64

import pytest

from mailhub.smtpserver.parser import (
    SMTPError, decode_plain, parse_bdat, parse_command, parse_mail_rcpt, reply,
)


def test_parse_command_upper_cases_verb_and_keeps_argument():
    assert parse_command(b"mail FROM:<a@b.example>") == ("MAIL", "FROM:<a@b.example>")
    assert parse_command(b"  NOOP  ") == ("NOOP", "")
    assert parse_command(b"EHLO client.example") == ("EHLO", "client.example")
    assert parse_command(b"") == ("", "")


def test_reply_single_and_multiline():
    assert reply(250, "2.0.0", "Ok") == b"250 2.0.0 Ok\r\n"
    assert reply(250, None, ["a", "b", "c"]) == b"250-a\r\n250-b\r\n250 c\r\n"


@pytest.mark.parametrize("arg,address", [
    ("FROM:<alice@example.com>", "alice@example.com"),
    ("from: <alice@example.com>", "alice@example.com"),
    ("FROM:alice@example.com", "alice@example.com"),
    ("FROM:<>", ""),
    ("FROM:<@relay.example,@other.example:alice@example.com>", "alice@example.com"),
    ('FROM:<"odd person"@example.com>', '"odd person"@example.com'),
    ('FROM:<"a>b"@example.com>', '"a>b"@example.com'),
    ("FROM:<user@[192.0.2.1]>", "user@[192.0.2.1]"),
    ("FROM:<jöran@bücher.example>", "jöran@bücher.example"),
])
def test_mail_paths(arg, address):
    p = parse_mail_rcpt(arg, "FROM")
    assert p.address == address
    assert p.utf8 == (not address.isascii())


def test_mail_parameters_parsed_and_upper_cased():
    p = parse_mail_rcpt("FROM:<a@b.example> size=1234 BODY=8BITMIME SMTPUTF8 AUTH=<>", "FROM")
    assert p.params == {"SIZE": "1234", "BODY": "8BITMIME", "SMTPUTF8": None, "AUTH": "<>"}


@pytest.mark.parametrize("arg", [
    "FROM <a@b.example>",          # no colon
    "TO:<a@b.example>",            # wrong keyword
    "FROM:<a@b.example",           # unbalanced
    "FROM:<a<b@c.example>",
    "FROM:<no-at-sign>",
    "FROM:<a..b@c.example>",
    "FROM:<a@b.example> SIZE=",    # empty value
    "FROM:<a@b.example> =x",
    "FROM:<a\x01b@c.example>",
])
def test_mail_syntax_errors(arg):
    with pytest.raises(SMTPError) as e:
        parse_mail_rcpt(arg, "FROM")
    assert e.value.code == 501


def test_rcpt_null_path_refused_and_postmaster_accepted():
    with pytest.raises(SMTPError) as e:
        parse_mail_rcpt("TO:<>", "TO")
    assert (e.value.code, e.value.enhanced) == (501, "5.1.3")
    assert parse_mail_rcpt("TO:<Postmaster>", "TO").address == "Postmaster"


def test_rcpt_source_route_keeps_only_final_mailbox():
    # relay trick: the route names our domain, the final mailbox another one
    p = parse_mail_rcpt("TO:<@mail.example.com:victim@elsewhere.example>", "TO")
    assert p.address == "victim@elsewhere.example"


def test_bdat_arguments():
    assert parse_bdat("100") == (100, False)
    assert parse_bdat("0 LAST") == (0, True)
    assert parse_bdat("5 last") == (5, True)
    for bad in ("", "x", "10 MORE", "-1", "1 LAST x", "9" * 13):
        with pytest.raises(ValueError):
            parse_bdat(bad)


def test_sasl_plain_decoding():
    assert decode_plain(b"\x00user@x.example\x00pw") == ("", "user@x.example", "pw")
    assert decode_plain(b"user\x00user\x00p\xc3\xa4ss") == ("user", "user", "päss")
    for bad in (b"nouser", b"\x00\x00pw", b"a\x00b", b"a\x00\xff\x00c"):
        with pytest.raises(ValueError):
            decode_plain(bad)
    assert base64.b64decode("AHVzZXIAcHc=") == b"\x00user\x00pw"
