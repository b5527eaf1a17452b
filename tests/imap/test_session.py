"""IMAP commands through real clients (imaplib, imapclient) against a real server."""
import base64
import imaplib
import re
import time

import pytest
import twisted.mail.imap4  # noqa: F401  registers the imap4-utf-7 codec

from tests.imap.conftest import ALICE, BOB, make_message, unique

MULTIPART = (
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n"
    b"To: alice@example.com, \"Doe, Jane\" <jane@example.net>\r\n"
    b"Cc: team: a@x.org, b@y.org;\r\n"
    b"Subject: report\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"Message-ID: <mp1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"first part\r\nline two\r\n"
    b"--XYZ\r\n"
    b"Content-Type: application/pdf; name=\"r.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"r.pdf\"\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--XYZ\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\nFrom: x@y.org\r\n\r\ninner body\r\n"
    b"--XYZ--\r\n"
    b"epilogue\r\n"
)


@pytest.fixture
def folder(imap_server):
    c = imap_server.client()
    name = unique("F")
    c.create_folder(name)
    yield c, name
    try:
        c.logout()
    except Exception:
        pass


def test_capabilities_and_greeting(imap_server):
    m = imap_server.imaplib(login=False)
    caps = m.capabilities
    assert "STARTTLS" in caps and "AUTH=PLAIN" in caps and "SASL-IR" in caps
    assert "UIDPLUS" not in caps  # extension list comes after login
    typ, data = m.login(*ALICE)
    assert typ == "OK" and b"[CAPABILITY " in data[0]
    typ, data = m.capability()
    caps = data[0].split()
    for cap in (b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"ENABLE", b"ID",
                b"UNSELECT", b"CHILDREN", b"LIST-EXTENDED", b"LIST-STATUS", b"LITERAL+",
                b"CONDSTORE", b"QRESYNC", b"APPENDLIMIT=52428800"):
        assert cap in caps
    assert b"STARTTLS" not in caps and b"AUTH=PLAIN" not in caps
    m.logout()


def test_imaps_has_no_starttls(imap_server):
    m = imap_server.imaplib_ssl()
    typ, data = m.capability()
    assert b"STARTTLS" not in data[0]
    assert m.select("INBOX")[0] == "OK"
    m.logout()


def test_starttls_then_login(imap_server):
    from tests.imap.conftest import insecure_ctx
    m = imaplib.IMAP4("127.0.0.1", imap_server.port, timeout=20)
    assert m.starttls(ssl_context=insecure_ctx())[0] == "OK"
    assert "STARTTLS" not in m.capabilities
    assert m.login(*ALICE)[0] == "OK"
    m.logout()


def test_login_failure(imap_server):
    m = imap_server.imaplib(login=False)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("alice@example.com", "wrong")
    assert m.login(*ALICE)[0] == "OK"  # session intact
    m.logout()


def test_authenticate_plain_sasl_ir_and_continuation(imap_server):
    r = imap_server.raw()
    token = base64.b64encode(b"\x00alice@example.com\x00pw-alice")
    out = r.cmd(b"AUTHENTICATE PLAIN " + token)
    assert out[-1].startswith(b"t1 OK [CAPABILITY")
    r.close()
    # Thunderbird: no initial response, waits for "+ "
    r = imap_server.raw()
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ "
    r.send(token + b"\r\n")
    assert r.line().startswith(b"a OK")
    r.close()
    # cancel and bad base64
    r = imap_server.raw()
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ "
    r.send(b"*\r\n")
    assert r.line().startswith(b"a BAD")
    assert r.cmd(b"AUTHENTICATE PLAIN !!!notb64")[-1].startswith(b"t1 BAD")
    assert r.cmd(b"AUTHENTICATE CRAM-MD5")[-1].startswith(b"t1 NO")
    assert r.cmd(b"NOOP")[-1] == b"t1 OK NOOP completed"
    r.close()


def test_select_examine_responses(folder, imap_server):
    c, name = folder
    c.append(name, make_message("one"), flags=[b"\\Seen"])
    c.append(name, make_message("two"))
    m = imap_server.imaplib()
    typ, data = m.select(name)
    assert typ == "OK" and data == [b"2"]
    resp = m.untagged_responses
    assert resp["RECENT"] == [b"2"]
    assert resp["UNSEEN"] == [b"2"]
    assert int(resp["UIDNEXT"][0]) == 3
    assert resp["UIDVALIDITY"][0].isdigit()
    assert b"\\Seen" in resp["FLAGS"][0]
    assert b"\\*" in resp["PERMANENTFLAGS"][0]
    assert b"READ-WRITE" in resp["READ-WRITE"][0] or "READ-WRITE" in resp
    # a second session sees them without \Recent
    m2 = imap_server.imaplib()
    m2.select(name, readonly=True)
    assert m2.untagged_responses["RECENT"] == [b"0"]
    assert "READ-ONLY" in m2.untagged_responses
    typ, data = m2.store("1", "+FLAGS", "\\Deleted")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    typ, data = m2.fetch("2", "(BODY[TEXT])")  # EXAMINE: no implicit \Seen
    typ, data = m2.fetch("2", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    m.logout()
    m2.logout()


def test_append_appenduid_internaldate(folder, imap_server):
    c, name = folder
    m = imap_server.imaplib()
    date = imaplib.Time2Internaldate(time.mktime((2021, 3, 4, 5, 6, 7, 0, 0, -1)))
    typ, data = m.append(name, "(\\Flagged $Label1)", date, make_message("dated"))
    assert typ == "OK"
    mm = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert mm and int(mm.group(2)) == 1
    m.select(name)
    typ, data = m.fetch("1", "(FLAGS INTERNALDATE UID)")
    assert b"\\Flagged" in data[0] and b"$Label1" in data[0]
    got = imaplib.Internaldate2tuple(data[0])
    assert time.mktime(got) == time.mktime((2021, 3, 4, 5, 6, 7, 0, 0, -1))
    # APPEND to a missing folder says TRYCREATE
    typ, data = m.append("NoSuchFolder" + unique(), None, None, make_message())
    assert typ == "NO" and b"TRYCREATE" in data[0]
    # bare LF is stored with CRLF
    m.append(name, None, None, b"Subject: lf\n\nbody\n")
    typ, data = m.fetch("2", "(BODY.PEEK[] RFC822.SIZE)")
    assert data[0][1] == b"Subject: lf\r\n\r\nbody\r\n"
    assert b"RFC822.SIZE 21" in data[0][0] + data[1]
    m.logout()


def test_fetch_items_and_structure(folder, imap_server):
    c, name = folder
    c.append(name, MULTIPART)
    c.select_folder(name)
    r = c.fetch([1], ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "FLAGS", "UID"])[1]
    env = r[b"ENVELOPE"]
    assert env.subject == b"report"
    assert env.message_id == b"<mp1@example.org>"
    assert env.from_[0].mailbox == b"jorg" and env.from_[0].host == b"example.org"
    assert [a.mailbox for a in env.to] == [b"alice", b"jane"]
    assert env.to[1].name == b"Doe, Jane"
    assert r[b"RFC822.SIZE"] == len(MULTIPART)
    bs = r[b"BODYSTRUCTURE"]
    assert bs.is_multipart
    parts, subtype = bs[0], bs[1]
    assert subtype == b"MIXED" and len(parts) == 3
    assert parts[0][:2] == (b"TEXT", b"PLAIN") and parts[0][2] == (b"CHARSET", b"utf-8")
    assert parts[1][:2] == (b"APPLICATION", b"PDF") and parts[1][5] == b"BASE64"
    assert parts[1][6] == len(b"JVBERi0xLjQK")
    assert parts[2][:2] == (b"MESSAGE", b"RFC822")
    m = imap_server.imaplib()
    m.select(name)
    typ, data = m.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[3.HEADER] BODY.PEEK[3.1] "
                             "BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)] BODY.PEEK[TEXT]<0.8>)")
    items = {data[i][0].rsplit(b" ", 2)[-2]: data[i][1] for i in range(0, len(data) - 1)
             if isinstance(data[i], tuple)}
    flat = b"".join(x[0] + x[1] if isinstance(x, tuple) else x for x in data)
    assert b"first part\r\nline two" in flat
    assert b"Content-Disposition: attachment" in flat
    assert b"Subject: inner\r\nFrom: x@y.org\r\n\r\n" in flat
    assert b"inner body" in flat
    assert b"Subject: report\r\nMessage-ID: <mp1@example.org>\r\n\r\n" in flat
    assert b"BODY[TEXT]<0> {8}\r\npreamble" in flat.replace(b"{8}preamble", b"{8}\r\npreamble") or \
        b"<0> {8}" in flat
    assert items is not None
    # PEEK left \Seen alone, BODY[] sets it
    assert b"\\Seen" not in m.fetch("1", "(FLAGS)")[1][0]
    typ, data = m.fetch("1", "(BODY[])")
    assert data[0][1] == MULTIPART and b"\\Seen" in data[1]
    # RFC822.* items
    typ, data = m.fetch("1", "(RFC822.HEADER RFC822.TEXT)")
    assert data[0][1].endswith(b"\r\n\r\n") and data[1][1].startswith(b"preamble")
    # non-existent part gives an empty string, not an error
    typ, data = m.fetch("1", "(BODY.PEEK[9])")
    assert typ == "OK"
    m.logout()


def test_store_flags_keywords_and_silent(folder, imap_server):
    c, name = folder
    c.append(name, make_message())
    m = imap_server.imaplib()
    m.select(name)
    typ, data = m.store("1", "+FLAGS", "(\\Flagged \\Answered Work)")
    assert b"\\Flagged" in data[0] and b"Work" in data[0]
    typ, data = m.store("1", "-FLAGS", "(\\Answered)")
    assert b"\\Answered" not in data[0]
    typ, data = m.store("1", "+FLAGS.SILENT", "(\\Draft)")
    assert data == [None]
    typ, data = m.store("1", "FLAGS", "(\\Seen Work)")
    assert data[0].count(b"\\") == 2 and b"Work" in data[0]  # \Seen and \Recent
    typ, data = m.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    assert b"UID 1" in data[0]
    # the flags are in the file name (shared with POP3)
    files = imap_server.env.messages("alice@example.com", name)
    assert files[0].name.endswith(":2,STa")
    m.logout()


def test_search(folder, imap_server):
    c, name = folder
    c.append(name, make_message("Quarterly numbers", frm="Zed <zed@corp.example>", body="budget 42\r\n"))
    c.append(name, make_message("lunch?", frm="bob@example.org", body="pizza\r\n"), flags=[b"\\Seen"])
    c.append(name, make_message("=?utf-8?q?Gr=C3=BC=C3=9Fe?=", frm="x@y.org"), flags=[b"\\Flagged"])
    c.select_folder(name)
    assert c.search(["FROM", "zed"]) == [1]
    assert c.search(["SUBJECT", "QUARTERLY"]) == [1]
    assert c.search(["SUBJECT", "grüße"], charset="UTF-8") == [3]
    assert c.search(["BODY", "pizza"]) == [2]
    assert c.search(["TEXT", "budget"]) == [1]
    assert c.search(["SEEN"]) == [2]
    assert c.search(["UNSEEN"]) == [1, 3]
    assert c.search(["FLAGGED"]) == [3]
    assert c.search(["OR", "FLAGGED", "SEEN"]) == [2, 3]
    assert c.search(["NOT", "FROM", "zed"]) == [2, 3]
    assert c.search(["LARGER", "10", "SMALLER", "100000"]) == [1, 2, 3]
    assert c.search(["SENTON", "23-Nov-2026"]) == [1, 2, 3]
    assert c.search(["SINCE", "1-Jan-2020"]) == [1, 2, 3]
    assert c.search(["BEFORE", "1-Jan-2020"]) == []
    assert c.search(["HEADER", "Message-ID", "example.org"]) == [1, 2, 3]
    assert c.search(["UID", "2:*"]) == [2, 3]
    assert c.search(["2,3", "NOT", "SEEN"]) == [3]
    m = imap_server.imaplib()
    m.select(name)
    typ, data = m.uid("SEARCH", "FROM", "bob")
    assert data == [b"2"]
    typ, data = m.search("KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    m.logout()


def test_copy_move_expunge_uidplus(folder, imap_server):
    c, name = folder
    dest = unique("D")
    c.create_folder(dest)
    for i in range(4):
        c.append(name, make_message(f"m{i}"))
    m = imap_server.imaplib()
    m.select(name)
    typ, data = m.copy("1:2", dest)
    assert typ == "OK" and re.search(rb"COPYUID \d+ 1:2 1:2", data[0])
    typ, data = m.uid("MOVE", "3", dest)
    assert typ == "OK"
    assert any(b"COPYUID" in x for x in m.untagged_responses.get("OK", []))
    assert m.untagged_responses.pop("EXPUNGE") == [b"3"]
    typ, data = m.status(dest, "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 3" in data[0] and b"UIDNEXT 4" in data[0]
    # EXPUNGE / UID EXPUNGE
    m.store("1:3", "+FLAGS", "\\Deleted")
    m.untagged_responses.pop("EXPUNGE", None)
    typ, data = m.uid("EXPUNGE", "1")
    assert typ == "OK"
    assert m.untagged_responses.pop("EXPUNGE") == [b"1"]
    typ, data = m.expunge()
    assert data == [b"2", b"1"]
    assert m.select(name)[1] == [b"0"]
    # copy to a missing folder
    typ, data = m.select(dest)
    typ, data = m.copy("1", "Missing" + unique())
    assert typ == "NO" and b"TRYCREATE" in data[0]
    # keywords are carried across folders with their own letter maps
    m.store("1", "+FLAGS", "(NewKw)")
    third = unique("K")
    m.create(third)
    m.copy("1", third)
    m.select(third)
    assert b"NewKw" in m.fetch("1", "(FLAGS)")[1][0]
    m.logout()


def test_mailbox_management(imap_server):
    c = imap_server.client()
    base = unique("Proj")
    c.create_folder(base)
    c.create_folder(f"{base}.Sub")
    names = {f[2]: f[0] for f in c.list_folders()}
    assert b"\\HasChildren" in names[base] and b"\\HasNoChildren" in names[f"{base}.Sub"]
    assert names["Sent"] == (b"\\HasNoChildren", b"\\Sent")
    assert b"\\Trash" in names["Trash"] and b"\\Junk" in names["Junk"]
    assert b"\\Archive" in names["Archive"] and b"\\Drafts" in names["Drafts"]
    # created folders are subscribed (Thunderbird shows only subscribed folders)
    subs = [f[2] for f in c.list_sub_folders()]
    assert base in subs and f"{base}.Sub" in subs and "INBOX" in subs and "Sent" in subs
    c.rename_folder(base, base + "X")
    names = [f[2] for f in c.list_folders()]
    assert base + "X" in names and base + "X.Sub" in names and base not in names
    assert base + "X.Sub" in [f[2] for f in c.list_sub_folders()]
    c.unsubscribe_folder(base + "X.Sub")
    assert base + "X.Sub" not in [f[2] for f in c.list_sub_folders()]
    c.delete_folder(base + "X.Sub")
    assert base + "X.Sub" not in [f[2] for f in c.list_folders()]
    m = imap_server.imaplib()
    typ, data = m.create("INBOX")
    assert typ == "NO"
    typ, data = m.delete("INBOX")
    assert typ == "NO"
    typ, data = m.create("Sent")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    typ, data = m.delete("Nope" + unique())
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    # patterns: % stops at the delimiter, INBOX is case-insensitive
    typ, data = m.list('""', "%")
    assert not any(b".Sub" in x for x in data)
    typ, data = m.list('""', "inbox")
    assert data == [b'(\\HasNoChildren) "." "INBOX"']
    typ, data = m._simple_command("LIST", '""', '""')
    assert m._untagged_response(typ, data, "LIST")[1] == [b'(\\Noselect) "." ""']
    assert m.select("inbox")[0] == "OK"
    m.logout()


def test_rename_inbox_moves_messages(imap_server):
    m = imap_server.imaplib(user=BOB)
    m.append("INBOX", None, None, make_message("to be moved"))
    target = unique("OldInbox")
    assert m.rename("INBOX", target)[0] == "OK"
    typ, data = m.status(target, "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    typ, data = m.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 0" in data[0]
    m.logout()


def test_utf7_and_utf8_names(imap_server):
    c = imap_server.client()
    name = "Entwürfe " + unique("")
    c.create_folder(name)  # imapclient encodes modified UTF-7
    raw = imap_server.raw()
    raw.cmd(b"LOGIN alice@example.com pw-alice")
    out = raw.cmd(b'LIST "" "Entw*"')
    wire = name.encode("imap4-utf-7")
    assert any(wire in l for l in out)
    assert b"&APw-" in wire
    assert raw.cmd(b"ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
    out = raw.cmd(b'LIST "" "Entw*"')
    assert any(name.encode("utf-8") in l for l in out)
    assert raw.cmd(b'SELECT "' + name.encode() + b'"')[-1].startswith(b"t1 OK")
    raw.close()
    # the folder is on disk in modified UTF-7, as Dovecot names it
    assert (imap_server.env.maildir("alice@example.com") / ("." + wire.decode())).is_dir()


def test_namespace_id_enable_unselect_status(folder, imap_server):
    c, name = folder
    assert c.namespace().personal == (("", "."),)
    info = c.id_({"name": "pytest", "version": "1"})
    info = info[0]
    info = dict(zip(info[0::2], info[1::2]))
    assert info[b"name"] == b"mailhub"
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]
    c.append(name, make_message(), flags=[b"\\Seen"])
    c.append(name, make_message())
    st = c.folder_status(name, ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY", "RECENT", "HIGHESTMODSEQ"])
    assert st[b"MESSAGES"] == 2 and st[b"UNSEEN"] == 1 and st[b"UIDNEXT"] == 3
    assert st[b"HIGHESTMODSEQ"] >= 2
    c.select_folder(name)
    c.add_flags([1, 2], [b"\\Deleted"])
    c.unselect_folder()  # no expunge
    c.select_folder(name)
    assert len(c.search()) == 2
    c.close_folder()  # CLOSE expunges \Deleted silently
    assert c.folder_status(name, ["MESSAGES"])[b"MESSAGES"] == 0


def test_list_extended_thunderbird(imap_server):
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    out = r.cmd(b'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)')
    assert out[-1].startswith(b"t1 OK")
    lines = [l for l in out if l.startswith(b"* LIST")]
    assert any(b"\\Subscribed" in l and b"\\Sent" in l and b'"Sent"' in l for l in lines)
    assert any(b'"INBOX"' in l for l in lines)
    out = r.cmd(b'LIST (SPECIAL-USE) "" "*"')
    names = sorted(l.rsplit(b" ", 1)[1] for l in out if l.startswith(b"* LIST"))
    assert names == [b'"Archive"', b'"Drafts"', b'"Junk"', b'"Sent"', b'"Trash"']
    out = r.cmd(b'LIST "" ("INBOX" "Sent") RETURN (STATUS (MESSAGES UIDNEXT) CHILDREN)')
    assert sum(1 for l in out if l.startswith(b"* STATUS")) == 2
    assert any(l.startswith(b'* STATUS "Sent" (MESSAGES ') for l in out)
    out = r.cmd(b'LSUB "" "*"')
    assert any(l == b'* LSUB () "." "Sent"' for l in out)
    r.close()


def test_condstore(folder, imap_server):
    c, name = folder
    c.append(name, make_message("a"))
    c.append(name, make_message("b"))
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    out = r.cmd(b"SELECT " + name.encode() + b" (CONDSTORE)")
    hm = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(out)).group(1))
    out = r.cmd(b"STORE 1 +FLAGS (\\Flagged)")
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", out[0]).group(1))
    assert m1 > hm
    out = r.cmd(b"FETCH 1:* (FLAGS) (CHANGEDSINCE " + str(hm).encode() + b")")
    assert len(out) == 2 and out[0].startswith(b"* 1 FETCH") and b"MODSEQ (%d)" % m1 in out[0]
    out = r.cmd(b"UID STORE 1,2 (UNCHANGEDSINCE " + str(hm).encode() + b") +FLAGS (\\Seen)")
    assert out[-1].startswith(b"t1 OK [MODIFIED 1]")
    assert any(l.startswith(b"* 2 FETCH") for l in out)
    out = r.cmd(b"SEARCH MODSEQ " + str(m1).encode())
    assert re.match(rb"\* SEARCH 1 2 \(MODSEQ \d+\)", out[0])
    r.close()


def test_qresync(folder, imap_server):
    c, name = folder
    for i in range(3):
        c.append(name, make_message(f"q{i}"))
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    assert r.cmd(b"ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
    out = r.cmd(b"SELECT " + name.encode())
    validity = re.search(rb"UIDVALIDITY (\d+)", b" ".join(out)).group(1)
    hm = re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(out)).group(1)
    r.cmd(b"STORE 1 +FLAGS (\\Deleted)")
    out = r.cmd(b"EXPUNGE")
    assert out[0] == b"* VANISHED 1"
    r.cmd(b"STORE 1 +FLAGS (\\Seen)")
    r.cmd(b"UNSELECT")
    out = r.cmd(b"SELECT " + name.encode() + b" (QRESYNC (" + validity + b" " + hm + b" 1:3))")
    assert b"* VANISHED (EARLIER) 1" in out
    assert any(re.match(rb"\* 1 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ", l) for l in out)
    out = r.cmd(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE " + hm + b" VANISHED)")
    assert out[0] == b"* VANISHED (EARLIER) 1"
    r.close()


def test_thunderbird_sequence(imap_server):
    """The commands Thunderbird 153 sends at start-up, in order (docs: notes/clients.md)."""
    imap_server.client().append("INBOX", make_message("for tb"))
    r = imap_server.raw()
    assert b"STARTTLS" in r.greeting
    out = r.cmd(b"CAPABILITY", b"1")
    assert b"AUTH=PLAIN" in out[0]
    r.send(b"2 AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ "
    r.send(base64.b64encode(b"\x00alice@example.com\x00pw-alice") + b"\r\n")
    assert r.until_tag(b"2")[-1].startswith(b"2 OK")
    assert r.cmd(b"NAMESPACE", b"3")[0] == b'* NAMESPACE (("" ".")) NIL NIL'
    assert r.cmd(b'ID ("name" "Thunderbird" "version" "153.7.0")', b"4")[-1].startswith(b"4 OK")
    out = r.cmd(b'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)', b"5")
    assert out[-1].startswith(b"5 OK")
    assert r.cmd(b'LIST "" "INBOX"', b"6")[0] == b'* LIST (\\HasNoChildren) "." "INBOX"'
    out = r.cmd(b'SELECT "INBOX"', b"7")
    assert out[-1].startswith(b"7 OK [READ-WRITE]")
    out = r.cmd(b"UID FETCH 1:* (FLAGS)", b"8")
    assert out[-1].startswith(b"8 OK") and len(out) >= 2
    last = int(re.search(rb"UID (\d+)", out[-2]).group(1))
    out = r.cmd(b"UID FETCH 1:%d (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
                b"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
                b"Content-Type Reply-To Received)])" % last, b"9")
    assert out[-1].startswith(b"9 OK")
    assert any(b"BODY[HEADER.FIELDS (From To Cc Bcc" in l for l in out)
    out = r.cmd(b"UID FETCH %d (UID RFC822.SIZE BODY.PEEK[])" % last, b"10")
    assert out[-1].startswith(b"10 OK")
    assert r.cmd(b"NOOP", b"11")[-1].startswith(b"11 OK")
    out = r.cmd(b"UID FETCH %d:* (FLAGS)" % (last + 1), b"12")
    assert out[-1].startswith(b"12 OK")  # n:* always matches the last message
    out = r.cmd(b'STATUS "Sent" (UIDNEXT MESSAGES UNSEEN RECENT)', b"13")
    assert out[0].startswith(b'* STATUS "Sent" (UIDNEXT ')
    r.send(b"14 IDLE\r\n")
    assert r.line() == b"+ idling"
    r.send(b"DONE\r\n")
    assert r.until_tag(b"14")[-1] == b"14 OK Idle completed"
    r.cmd(b"LOGOUT", b"15")
    r.close()


def test_search_and_envelope_survive_cache_loss(folder, imap_server):
    c, name = folder
    c.append(name, make_message("cached subject", frm="Carl <carl@cache.example>"))
    c.select_folder(name)
    assert c.search(["FROM", "carl@cache.example"]) == [1]
    md = imap_server.env.maildir("alice@example.com", name)
    for f in ("mailhub-cache", "mailhub-search", "mailhub-envelopes"):
        (md / f).unlink(missing_ok=True)
    # deleting the caches loses nothing (the files coming back: test_search_columns.py)
    c.append(name, make_message("second", frm="Dora <dora@cache.example>"))
    c2 = imap_server.client()
    c2.select_folder(name)
    assert c2.search(["FROM", "cache.example"]) == [1, 2]
    assert c2.search(["FROM", "DORA"]) == [2]
    assert c2.fetch([1], ["ENVELOPE"])[1][b"ENVELOPE"].subject == b"cached subject"
    c2.logout()


def test_new_keyword_announces_flags(folder, imap_server):
    c, name = folder
    c.append(name, make_message())
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    r.cmd(b"SELECT " + name.encode())
    out = r.cmd(b"STORE 1 +FLAGS (Project-X)")
    assert any(l.startswith(b"* FLAGS (") and b"Project-X" in l for l in out)
    assert any(b"[PERMANENTFLAGS (" in l and b"Project-X" in l and b"\\*" in l for l in out)
    r.close()


def test_empty_mailbox_star_ranges(folder, imap_server):
    c, name = folder
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    r.cmd(b"SELECT " + name.encode())
    assert r.cmd(b"FETCH 1:* (FLAGS)") == [b"t1 OK Fetch completed"]
    assert r.cmd(b"UID FETCH 1:* (FLAGS)") == [b"t1 OK Fetch completed"]
    assert r.cmd(b"SEARCH ALL") == [b"* SEARCH", b"t1 OK Search completed"]
    assert r.cmd(b"FETCH 1 (FLAGS)")[-1].startswith(b"t1 BAD")
    r.close()


def test_search_big_folder_in_slices(folder, imap_server):
    """Over 2000 messages SEARCH runs in slices between reactor turns; results stay exact."""
    c, name = folder
    md = imap_server.env.maildir("alice@example.com", name)
    n = 2600
    for i in range(n):
        body = "needle here\r\n" if i % 100 == 7 else "hay\r\n"
        frm = "Wanted <w@x.org>" if i % 50 == 3 else f"u{i}@x.org"
        (md / "cur" / f"{1600000000 + i}.M{i}P1Q{i}.t,S=1:2,{'S' if i % 2 else ''}").write_bytes(
            make_message(f"s{i}", frm=frm, body=body))
    c.select_folder(name)
    assert len(c.search(["ALL"])) == n
    assert c.search(["BODY", "needle"]) == [i + 1 for i in range(n) if i % 100 == 7]
    assert c.search(["FROM", "wanted", "UNSEEN"]) == [i + 1 for i in range(n) if i % 50 == 3 and not i % 2]
    assert c.search(["NOT", "FROM", "wanted", "SEEN", "SUBJECT", "s1"]) == \
        [i + 1 for i in range(n) if i % 50 != 3 and i % 2 and f"s{i}".startswith("s1")]
    uids = c.search(["OR", "FROM", "wanted", "BODY", "needle"])
    assert len(uids) == len({i for i in range(n) if i % 50 == 3 or i % 100 == 7})


def test_utf8_append_and_status_size(folder, imap_server):
    c, name = folder
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    assert r.cmd(b"ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
    msg = "Subject: caf\u00e9\r\nFrom: \u00e9l\u00e8ve@exemple.fr\r\n\r\nbody\r\n".encode()
    out = r.cmd(b"APPEND " + name.encode() + b" UTF8 (~{%d+}\r\n" % len(msg) + msg + b")")
    assert out[-1].startswith(b"t1 OK [APPENDUID ")
    out = r.cmd(b"STATUS " + name.encode() + b" (MESSAGES SIZE)")
    assert out[0] == b'* STATUS "%s" (MESSAGES 1 SIZE %d)' % (name.encode(), len(msg))
    r.cmd(b"SELECT " + name.encode())
    out = r.cmd(b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert "caf\u00e9".encode() in b"\r\n".join(out)
    r.close()


def test_recursivematch_and_lsub_parents(imap_server):
    c = imap_server.client()
    top = unique("Top")
    c.create_folder(f"{top}.Child")  # creates and subscribes the child; the parent exists too
    c.unsubscribe_folder(top)
    r = imap_server.raw()
    r.cmd(b"LOGIN alice@example.com pw-alice")
    out = r.cmd(b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    line = [l for l in out if b'"' + top.encode() + b'"' in l]
    assert line and line[0].endswith(b'("CHILDINFO" ("SUBSCRIBED"))')
    assert b"\\Subscribed" not in line[0]
    out = r.cmd(b'LSUB "" "%"')
    assert b'* LSUB (\\Noselect) "." "' + top.encode() + b'"' in out
    out = r.cmd(b'LSUB "" "*"')
    assert b'* LSUB () "." "' + top.encode() + b'.Child"' in out
    assert not any(l.endswith(b'"' + top.encode() + b'"') for l in out)
    r.close()
    c.logout()
