"""The pure command parser and the framer, without sockets: grammar, literals, LITERAL+, limits,
and a seeded random fuzz (the parser either returns a Command or raises ParseError)."""
import datetime
import random

import pytest

from mailhub.imapserver.framing import CommandFramer
from mailhub.imapserver.parser import (FetchAtt, ParseError, SeqSet, Section, command_name,
                                       parse_command, parse_tag)


def test_simple_commands():
    for name in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "EXPUNGE",
                 "UNSELECT", "IDLE", "NAMESPACE"):
        c = parse_command(b"a1 " + name.lower().encode())
        assert (c.tag, c.name, c.args, c.uid) == ("a1", name, (), False)


def test_login_strings():
    c = parse_command(b'x LOGIN "al\\"ice" {3+}\r\np w')
    assert c.args == (b'al"ice', b"p w")
    c = parse_command(b"x LOGIN alice@example.com secret]")
    assert c.args == (b"alice@example.com", b"secret]")


def test_sequence_sets():
    c = parse_command(b"a FETCH 1,3:5,7:*,* FLAGS")
    s = c.args[0]
    assert s.ranges == ((1, 1), (3, 5), (7, None), (None, None))
    assert s.resolve(10) == [(1, 1), (3, 5), (7, 10), (10, 10)]
    assert SeqSet(((5, 2),)).resolve(9) == [(2, 5)]
    for bad in (b"a FETCH 0 FLAGS", b"a FETCH 1: FLAGS", b"a FETCH 1,,2 FLAGS", b"a FETCH x FLAGS",
                b"a FETCH 99999999999 FLAGS", b"a FETCH -1 FLAGS"):
        with pytest.raises(ParseError) as e:
            parse_command(bad)
        assert e.value.tag == "a"


def test_fetch_items_and_macros():
    c = parse_command(b"a UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To "
                      b"Subject)])")
    assert c.uid and c.name == "FETCH"
    atts = c.args[1]
    assert atts[3] == FetchAtt("BODY", Section((), "HEADER.FIELDS", (b"From", b"To", b"Subject")),
                               None, True)
    c = parse_command(b"a FETCH 2 FULL")
    assert [a.name for a in c.args[1]] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    c = parse_command(b"a FETCH 2 (BODY[1.2.MIME] BODY[3.HEADER]<10.20> BODY[] BODY[TEXT])")
    secs = [(a.section, a.partial) for a in c.args[1]]
    assert secs[0] == (Section((1, 2), "MIME"), None)
    assert secs[1] == (Section((3,), "HEADER"), (10, 20))
    assert secs[2] == (Section(), None)
    assert Section((1, 2), "HEADER.FIELDS", (b"A",)).label() == b"1.2.HEADER.FIELDS (A)"
    c = parse_command(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
    assert c.args[2] == {"CHANGEDSINCE": 12345}
    for bad in (b"a FETCH 1 (FLAGS", b"a FETCH 1 (FOO)", b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BODY[1.]",
                b"a FETCH 1 BODY[HEADER.FIELDS ()]", b"a FETCH 1 ()", b"a FETCH 1 FLAGS)"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_store_and_copy():
    c = parse_command(b"a UID STORE 1:3 (UNCHANGEDSINCE 7) +FLAGS.SILENT (\\Seen $Junk)")
    assert c.args == (SeqSet(((1, 3),)), "+", True, ["\\Seen", "$Junk"], 7)
    c = parse_command(b"a STORE 1 -FLAGS \\Deleted")
    assert c.args[1:4] == ("-", False, ["\\Deleted"])
    with pytest.raises(ParseError):
        parse_command(b"a STORE 1 FLAGZ (\\Seen)")
    with pytest.raises(ParseError):
        parse_command(b"a STORE 1 FLAGS (\\*)")
    assert parse_command(b"a UID MOVE 1:* Trash").args == (SeqSet(((1, None),)), b"Trash")
    assert parse_command(b"a UID EXPUNGE 4:5").args == (SeqSet(((4, 5),)),)
    with pytest.raises(ParseError):
        parse_command(b"a EXPUNGE 4:5")
    with pytest.raises(ParseError):
        parse_command(b"a UID NOOP")


def test_search_programs():
    c = parse_command(b'a UID SEARCH CHARSET UTF-8 OR FROM "bob" (TO x SINCE 1-Feb-2020) '
                      b"UNSEEN NOT DELETED 2:4 HEADER X-Spam yes LARGER 10 MODSEQ 5 KEYWORD $x")
    charset, prog, ret = c.args
    assert charset == "UTF-8" and ret is None
    keys = prog[1]
    assert keys[0] == ("OR", ("FROM", b"bob"), ("AND", (("TO", b"x"), ("SINCE", datetime.date(2020, 2, 1)))))
    assert keys[1] == ("NOT", ("FLAG", "\\Seen"))
    assert keys[2] == ("NOT", ("FLAG", "\\Deleted"))
    assert keys[3] == ("SEQ", SeqSet(((2, 4),)))
    assert keys[4] == ("HEADER", b"X-Spam", b"yes")
    assert keys[5:] == (("LARGER", 10), ("MODSEQ", 5), ("FLAG", "$x"))
    assert parse_command(b"a SEARCH ALL").args[1] == ("AND", (("ALL",),))
    assert parse_command(b'a SEARCH ON "3-Mar-2021"').args[1][1][0] == ("ON", datetime.date(2021, 3, 3))
    for bad in (b"a SEARCH", b"a SEARCH FOO", b"a SEARCH (ALL", b"a SEARCH SINCE 31-Foo-2020",
                b"a SEARCH OR ALL", b"a SEARCH " + b"(" * 200 + b"ALL" + b")" * 200):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_append_forms():
    c = parse_command(b"a APPEND INBOX {5}\r\nhello")
    assert c.args == (b"INBOX", [([], None, b"hello")])
    c = parse_command(b'a APPEND Sent (\\Seen) "05-Jan-2021 10:11:12 +0100" {2+}\r\nhi {1}\r\nx')
    flags, when, data = c.args[1][0]
    assert flags == ["\\Seen"] and data == b"hi"
    assert when.utcoffset() == datetime.timedelta(hours=1) and when.day == 5
    assert c.args[1][1] == ([], None, b"x")
    for bad in (b"a APPEND INBOX", b"a APPEND INBOX (\\Seen)", b"a APPEND INBOX {5}\r\nabc",
                b'a APPEND INBOX "bad date" {1}\r\nx'):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_list_extended_and_status():
    c = parse_command(b'a LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))')
    assert c.args == (["SUBSCRIBED"], b"", [b"*"], ["SPECIAL-USE", "STATUS"], ["MESSAGES", "UNSEEN"])
    c = parse_command(b'a LIST "" ("INBOX" %.x)')
    assert c.args[2] == [b"INBOX", b"%.x"]
    assert parse_command(b"a LIST \"\" *").args[2] == [b"*"]
    c = parse_command(b"a STATUS Sent (UIDNEXT MESSAGES UNSEEN RECENT)")
    assert c.args == (b"Sent", ["UIDNEXT", "MESSAGES", "UNSEEN", "RECENT"])
    with pytest.raises(ParseError):
        parse_command(b"a STATUS Sent (FOO)")


def test_select_params_enable_id_authenticate():
    assert parse_command(b"a SELECT INBOX (CONDSTORE)").args == (b"INBOX", {"CONDSTORE": True})
    c = parse_command(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))")
    assert c.args[1]["QRESYNC"][:2] == (67890007, 20050715194045000)
    assert parse_command(b"a ENABLE condstore UTF8=ACCEPT").args == (["CONDSTORE", "UTF8=ACCEPT"],)
    assert parse_command(b'a ID ("name" "Thunderbird" "version" NIL)').args == (
        [b"name", b"Thunderbird", b"version", None],)
    assert parse_command(b"a ID NIL").args == (None,)
    assert parse_command(b"a AUTHENTICATE PLAIN AGFsaWNlAHB3").args == ("PLAIN", b"AGFsaWNlAHB3")
    assert parse_command(b"a AUTHENTICATE PLAIN =").args == ("PLAIN", b"")
    assert parse_command(b"a AUTHENTICATE plain").args == ("PLAIN", None)


def test_errors_carry_tag():
    with pytest.raises(ParseError) as e:
        parse_command(b"")
    assert e.value.tag is None
    with pytest.raises(ParseError) as e:
        parse_command(b"tag")
    assert e.value.tag == "tag"
    with pytest.raises(ParseError) as e:
        parse_command(b"tag FROBNICATE")
    assert e.value.tag == "tag" and "unknown command" in str(e.value)
    assert parse_tag(b"abc FOO (") == "abc"
    assert parse_tag(b"(bad") is None
    assert command_name(b"a UID fetch 1 x") == "FETCH"
    with pytest.raises(ParseError):
        parse_command(b'a LOGIN "unterminated')
    with pytest.raises(ParseError):
        parse_command(b'a LOGIN "a\\x" b')
    with pytest.raises(ParseError):
        parse_command(b"a LOGIN {10}\r\nshort")


def test_fuzz_parser_never_crashes():
    rng = random.Random(1234)
    samples = [b"a1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.10>)",
               b'a2 SEARCH OR FROM "x" (TO y) NOT 1:3 SINCE 1-Jan-2020',
               b"a3 UID STORE 1,2 +FLAGS.SILENT (\\Seen foo)",
               b'a4 LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))',
               b"a5 APPEND INBOX (\\Seen) {3+}\r\nabc",
               b"a6 SELECT INBOX (QRESYNC (1 2 1:5 (1,3 1,3)))"]
    alphabet = b'()[]{}<>"\\*%:,.+- 0123456789ABCDEFabcxyz\r\n\x00\xff'
    for _ in range(20000):
        s = bytearray(rng.choice(samples))
        for _m in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(s) + 1)
            if op < 0.4 and s:
                del s[min(i, len(s) - 1)]
            elif op < 0.8:
                s.insert(i, rng.choice(alphabet))
            else:
                s[i:i] = s[:rng.randrange(len(s) + 1)]
        try:
            cmd = parse_command(bytes(s))
        except ParseError:
            continue
        assert cmd.tag and cmd.name


# -- framer ----------------------------------------------------------------------------------

def test_framer_lines_and_sync_literal():
    f = CommandFramer()
    assert f.feed(b"a NOOP\r\nb LOGIN {5}\r\n") == [("command", b"a NOOP"), ("continue", None)]
    assert f.feed(b"al") == []
    assert f.feed(b"ice {2+}\r\npw\r\n") == [("command", b"b LOGIN {5}\r\nalice {2+}\r\npw")]


def test_framer_split_everywhere():
    data = b"a APPEND INBOX {11+}\r\nhello\r\nworld\r\nb NOOP\r\n"
    for step in (1, 2, 3, 7):
        f = CommandFramer()
        events = []
        for i in range(0, len(data), step):
            events += f.feed(data[i:i + step])
        assert events == [("command", b"a APPEND INBOX {11+}\r\nhello\r\nworld"), ("command", b"b NOOP")]


def test_framer_refuses_big_literals_without_buffering():
    f = CommandFramer(lambda line: 100)
    # synchronising: refused before the client sends anything
    assert f.feed(b"a APPEND INBOX {1000}\r\n") == [("toobig", b"a APPEND INBOX {1000}")]
    assert f.feed(b"b NOOP\r\n") == [("command", b"b NOOP")]
    # non-synchronising: the bytes are read and thrown away, the command dropped
    ev = f.feed(b"c APPEND INBOX {5000+}\r\n")
    assert ev == [("toobig", b"c APPEND INBOX {5000+}")]
    for _ in range(5):
        assert f.feed(b"x" * 1000) == []
        assert len(f._buf) == 0 and f._parts == []
    assert f.feed(b"\r\nd NOOP\r\n") == [("command", b"d NOOP")]


def test_framer_long_lines():
    f = CommandFramer(max_line=100)
    ev = f.feed(b"a " + b"x" * 500)
    assert ev and ev[0][0] == "toolong"
    assert f.feed(b"y" * 500) == []
    assert f.feed(b"\r\nb NOOP\r\n") == [("command", b"b NOOP")]
    ev = f.feed(b"c " + b"z" * 200 + b"\r\nd NOOP\r\n")
    assert [e[0] for e in ev] == ["toolong", "command"]


def test_framer_then_parser_roundtrip():
    f = CommandFramer()
    ev = f.feed(b'a LOGIN {5}\r\n')
    ev += f.feed(b'al"ce "pw"\r\n')
    cmd = parse_command(ev[-1][1])
    assert cmd.args == (b'al"ce', b"pw")


def test_append_utf8_and_literal8():
    c = parse_command(b"a APPEND INBOX (\\Seen) UTF8 (~{4+}\r\nab\xc3\xa9)")
    assert c.args[1] == [(["\\Seen"], None, b"ab\xc3\xa9")]
    c = parse_command(b"a APPEND INBOX ~{2}\r\nhi")
    assert c.args[1] == [([], None, b"hi")]
    with pytest.raises(ParseError):
        parse_command(b"a APPEND INBOX UTF8 (~{2}\r\nhi")
