"""SEARCH on header fields through the persisted columns (store.cache.SearchColumns,
imapserver.search.precompute), without a server: the folder-wide answer equals the
per-message evaluation (RFC 3501 substring, case-insensitive, RFC 2047-decoded), and the
``mailhub-search`` file is rebuilt when deleted or garbled and realigned when stale."""
import imaplib
import os

import pytest

from mailhub.imapserver import search as S
from mailhub.imapserver.mailbox import envelope_fields
from mailhub.store import MailStore
from mailhub.store.cache import SEARCH_FILE
from mailhub.store.index import UIDLIST, FolderIndex
from tests.conftest import MailhubEnv, MailhubServer
from tests.imap.conftest import ALICE, make_message

ADDR = "erin@example.com"

MESSAGES = [
    b"From: Zed Zebra <zed@example.org>\r\nTo: a@x.org\r\nSubject: Quarterly Budget\r\n\r\nb\r\n",
    b"From: =?UTF-8?B?SsO8cmdlbiBHcsO8w59l?= <jg@example.de>\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?=\r\n"
    b"\r\nb\r\n",
    b"From: plain@example.net\r\nTo: one@x.org\r\nTo: two@y.org\r\nCc:\r\nSubject: folded\r\n"
    b" across two lines\r\n\r\nb\r\n",
    "From: \u00c9l\u00e8ve <eleve@exemple.fr>\r\nSubject: STRASSE und Stra\u00dfe\r\n\r\nb\r\n".encode(),
    b"From: bad \xff\xfe bytes <bad@example.com>\r\nSubject: latin \xe9\r\n\r\nb\r\n",
    b"Subject: no from at all\r\nMessage-ID: <m5@example.org>\r\n\r\nb\r\n",
    b"From: nul\x00inside <nul@example.com>\r\nSubject: has a nul\r\n\r\nb\r\n",
    b"FROM: Upper Case Name <UPPER@EXAMPLE.ORG>\r\nsubject: lower name\r\nBcc: hidden@example.org\r\n"
    b"\r\nb\r\n",
    b"From: =?utf-8?q?nul=00word?= <q@example.com>\r\nSubject: =?utf-8?b?4pyTIGNoZWNr?=\r\n\r\nb\r\n",
]

PROGRAMS = [
    ("FROM", b"zed"), ("FROM", b"ZEBRA"), ("FROM", b"example"), ("FROM", b"j\xc3\xbcrgen"),
    ("FROM", b"GR\xc3\x9c\xc3\x9fE"), ("FROM", b"\xc3\xa9l\xc3\xa8ve"), ("FROM", b"upper@example"),
    ("FROM", b"nul"), ("FROM", b"bad"), ("FROM", b"@"), ("FROM", b"nomatch"),
    ("SUBJECT", b"budget"), ("SUBJECT", b"gr\xc3\xbc\xc3\x9fe"), ("SUBJECT", b"strasse"),
    ("SUBJECT", b"folded across"), ("SUBJECT", b"\xe2\x9c\x93"), ("SUBJECT", b"latin"),
    ("SUBJECT", b""), ("TO", b"two@y"), ("TO", b"x.org"), ("CC", b""), ("CC", b"a"),
    ("BCC", b"HIDDEN"), ("HEADER", b"Message-ID", b"m5@"), ("HEADER", b"message-id", b""),
    ("HEADER", b"From", b"zed"), ("HEADER", b"Subject", b"NAME"),
]


def drop(folder, i, data):
    p = folder.path / "cur" / f"{1600000000 + i}.M{i}P1Q{i}.host,S={len(data)}:2,"
    p.write_bytes(data)
    return p


def key_of(prog):
    return (prog[0], prog[1], prog[2]) if prog[0] == "HEADER" else (prog[0], prog[1])


def per_message(idx, key):
    """The reference: the program evaluated message by message on the header blocks."""
    re_ = lambda p: envelope_fields(idx, p)  # noqa: E731
    out = []
    for p, u in enumerate(idx.uids):
        ctx = S.MessageContext(idx, p, p + 1, u, False, None, None, re_)
        if S.matches(key, ctx, len(idx.uids), u):
            out.append(u)
    return out


def folder_wide(idx, key):
    pre = S.precompute(("AND", (key,)), idx, lambda p: envelope_fields(idx, p))
    if not key[-1]:  # "" matches the messages having the field: left to the per-message path
        assert pre == ("AND", (key,))
        return per_message(idx, key)
    assert pre[1][0][0] == "UIDS"
    return sorted(pre[1][0][1])


@pytest.fixture
def folder(tmp_path):
    s = MailStore(tmp_path / "mail", fsync=False)
    s.create_user(ADDR)
    f = s.folder(ADDR)
    for i, data in enumerate(MESSAGES):
        drop(f, i, data)
    return f


def fresh(folder):
    idx = FolderIndex(folder.path, fsync=False)
    idx.sync()
    return idx


def test_columns_answer_like_per_message_evaluation(folder):
    idx = fresh(folder)
    for prog in PROGRAMS:
        key = key_of(prog)
        assert folder_wide(idx, key) == per_message(idx, key), key
    # spot checks that the reference itself is what RFC 3501 asks for
    assert folder_wide(idx, ("FROM", b"j\xc3\xbcrgen")) == [2]
    assert folder_wide(idx, ("SUBJECT", b"strasse")) == [4]  # casefold: Stra\u00dfe
    assert folder_wide(idx, ("FROM", b"upper@example")) == [8]
    assert folder_wide(idx, ("TO", b"two@y")) == [3]
    assert folder_wide(idx, ("SUBJECT", b"folded across")) == [3]
    assert folder_wide(idx, ("CC", b"")) == [3]  # present, even empty
    assert folder_wide(idx, ("FROM", b"zed")) == [1]


@pytest.mark.parametrize("cache_loaded", [False, True])
def test_column_values_in_bulk_equal_field_values(folder, cache_loaded):
    """Both sources: the message files (a few rows, header cache not loaded) and the cache."""
    idx = fresh(folder)
    re_ = lambda p: envelope_fields(idx, p)  # noqa: E731
    if cache_loaded:
        for p in range(len(idx.uids)):
            re_(p)
    assert idx.cache.loaded == cache_loaded
    names = (b"from", b"subject", b"to", b"cc", b"bcc", b"message-id", b"date")
    bulk = {name: S.column_values(idx, name, range(len(idx.uids)), re_) for name in names}
    assert idx.cache.loaded == cache_loaded
    for name in names:
        one = [S.field_values(idx, p, name, re_).replace("\x00", "\n") for p in range(len(idx.uids))]
        assert bulk[name] == one, name


def test_persisted_columns_serve_the_first_search_after_a_restart(folder):
    idx = fresh(folder)
    assert folder_wide(idx, ("FROM", b"example")) == [1, 2, 3, 5, 7, 8, 9]
    idx.save_snapshot()
    assert (folder.path / SEARCH_FILE).exists()
    idx2 = FolderIndex(folder.path, fsync=False)
    idx2.sync()

    def no_reads(p):
        raise AssertionError("the persisted column should answer")

    pre = S.precompute(("AND", (("FROM", b"EXAMPLE"),)), idx2, no_reads)
    assert sorted(pre[1][0][1]) == [1, 2, 3, 5, 7, 8, 9]
    assert not idx2.cache.loaded  # the header cache was not even loaded
    # a field not persisted yet is built on demand
    assert folder_wide(idx2, ("SUBJECT", b"budget")) == [1]


def test_deleted_or_garbled_file_is_rebuilt(folder):
    idx = fresh(folder)
    folder_wide(idx, ("FROM", b"zed"))
    idx.save_snapshot()
    path = folder.path / SEARCH_FILE
    for damage in (None, b"", b"garbage", path.read_bytes()[:-7], b"\xe3\x01\x00\x00"):
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage)
        idx2 = fresh(folder)
        for prog in PROGRAMS[:12]:
            key = key_of(prog)
            assert folder_wide(idx2, key) == per_message(idx2, key), (damage, key)
        idx2.save_snapshot()
        assert path.exists()
        idx3 = fresh(folder)
        assert idx3.search.load() and b"from" in idx3.search.cols


def test_stale_file_is_realigned(folder):
    idx = fresh(folder)
    folder_wide(idx, ("FROM", b"zed"))
    folder_wide(idx, ("SUBJECT", b"x"))
    idx.save_snapshot()
    # out of process: one message gone, two new ones (one of them matching)
    victim = next((folder.path / "cur").glob("1600000000.*"))
    os.unlink(victim)
    drop(folder, 20, b"From: Zed Again <zed2@example.org>\r\nSubject: new\r\n\r\nb\r\n")
    drop(folder, 21, b"From: other@example.org\r\nSubject: Budget too\r\n\r\nb\r\n")
    idx2 = fresh(folder)
    zed = folder_wide(idx2, ("FROM", b"zed"))
    assert not idx2.cache.loaded  # the two new rows came from their files
    assert zed == per_message(idx2, ("FROM", b"zed"))
    assert [idx2.key(idx2.pos(u)).partition(".")[0] for u in folder_wide(idx2, ("FROM", b"zed"))] \
        == ["1600000020"]
    assert idx2.search.load() is False and idx2.search._loaded  # it did use the stale file
    assert folder_wide(idx2, ("SUBJECT", b"budget")) == per_message(idx2, ("SUBJECT", b"budget"))
    assert len(folder_wide(idx2, ("SUBJECT", b"budget"))) == 1
    # the uidlist lost: new UIDs for the same messages; the columns follow the keys
    idx2.save_snapshot()
    os.unlink(folder.path / UIDLIST)
    idx3 = fresh(folder)
    for prog in PROGRAMS:
        key = key_of(prog)
        assert folder_wide(idx3, key) == per_message(idx3, key), key


def test_columns_follow_appends_and_expunges_in_process(folder):
    idx = fresh(folder)
    assert folder_wide(idx, ("FROM", b"zed")) == [1]
    # a new message at the end (the append path of the columns)
    p = drop(folder, 30, b"From: zed@late.example\r\nSubject: late\r\n\r\nb\r\n")
    uid = idx.add_file(p.name.partition(":")[0], "cur", p.name)
    assert folder_wide(idx, ("FROM", b"zed")) == [1, uid]
    assert folder_wide(idx, ("SUBJECT", b"late")) == [uid]
    # expunge the first: the rows are realigned by key
    idx.expunge([0])
    assert folder_wide(idx, ("FROM", b"zed")) == [uid]
    assert folder_wide(idx, ("FROM", b"example")) == per_message(idx, ("FROM", b"example"))
    # and what was saved after all that is right after a restart
    idx.save_snapshot()
    idx2 = fresh(folder)
    assert idx2.search.load()
    assert folder_wide(idx2, ("FROM", b"zed")) == [uid]
    assert folder_wide(idx2, ("SUBJECT", b"late")) == [uid]


def test_needle_with_newline_uses_the_per_message_path(folder):
    idx = fresh(folder)
    key = ("SUBJECT", b"a\nb")
    assert S.precompute(("AND", (key,)), idx, lambda p: envelope_fields(idx, p)) == ("AND", (key,))


def test_server_writes_columns_at_shutdown_and_answers_from_them(tmp_path):
    """Over IMAP with restarts: the columns are written at shutdown, serve the first SEARCH
    after a restart, and come back when deleted; new mail after a restart is found."""
    env = MailhubEnv(tmp_path, extra_toml="[imap]\nauth_failure_delay = 0.0\n")
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.add_user(*ALICE)
    md = env.maildir("alice@example.com")
    columns = md / SEARCH_FILE

    def session(srv, *appends):
        m = imaplib.IMAP4("127.0.0.1", srv.port("imap"))
        m.login(*ALICE)
        for subject, frm in appends:
            m.append("INBOX", None, None, make_message(subject, frm=frm))
        m.select("INBOX")
        out = {q: m.uid("SEARCH", "FROM", q)[1][0].split() for q in ("carl", "DORA", "cache.example")}
        m.logout()
        return out

    srv = MailhubServer(env).start()
    try:
        got = session(srv, ("one", "Carl <carl@cache.example>"), ("two", "Eve <eve@other.example>"))
        assert got == {"carl": [b"1"], "DORA": [], "cache.example": [b"1"]}
    finally:
        srv.stop()
    assert b"carl@cache.example" in columns.read_bytes()
    for damage in ("new mail", "deleted"):
        if damage == "deleted":
            columns.unlink()
        srv = MailhubServer(env).start()
        try:
            if damage == "new mail":
                got = session(srv, ("three", "Dora <dora@cache.example>"))
            else:
                got = session(srv)
            assert got == {"carl": [b"1"], "DORA": [b"3"], "cache.example": [b"1", b"3"]}
        finally:
            srv.stop()
        assert b"dora@cache.example" in columns.read_bytes()
