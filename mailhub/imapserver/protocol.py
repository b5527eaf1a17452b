"""IMAPServerProtocol: one IMAP4rev1 session (RFC 3501 + the extensions in CAPABILITIES).

Bytes go through CommandFramer (literals, LITERAL+, size limits) and parse_command (pure);
this module owns the state machine (not authenticated / authenticated / selected / logout),
the commands, and the output. Responses of one batch of pipelined commands are written with
a single transport.write; long FETCH output is produced in chunks while the transport is not
paused (the protocol is a streaming producer), so a 50,000-message FETCH never sits whole in
memory. Folder state comes from the shared FolderIndex (mailhub.store.index); every command
ends with the untagged updates other sessions or deliveries caused, and an IDLE session gets
them pushed at once through MailboxEvents.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from collections import deque
from itertools import chain

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mailhub.auth import IMailUser
from mailhub.imapserver import message as M
from mailhub.imapserver import search as S
from mailhub.imapserver.framing import CommandFramer
from mailhub.imapserver.mailbox import (BadSequence, SelectedMailbox, envelope_fields,
                                        flags_bytes, read_all, read_header)
from mailhub.imapserver.parser import ParseError, command_name, parse_command, parse_tag
from mailhub.imapserver.response import literal, ordered_set_text, quote_string, seqset_text
from mailhub.netio import write_now
from mailhub.store.interfaces import FolderError, StoreError
from mailhub.store.maildir import DELIMITER, SPECIAL_FOLDERS

log = Logger(namespace="mailhub.imap")

NOT_AUTH, AUTH, SELECTED, LOGOUT = range(4)
ANY = (NOT_AUTH, AUTH, SELECTED)
AUTHED = (AUTH, SELECTED)
SEL = (SELECTED,)
FETCH_CHUNK = 256 * 1024
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
SMALL_LITERAL = 1024 * 1024


class Settings:
    """Per-listener knobs (from [imap]); tests may change them on the factory."""

    def __init__(self, cfg=None):
        imap = cfg["imap"] if cfg is not None else {}
        self.idle_timeout = float(imap.get("idle_timeout", 1800))
        self.idle_max = float(imap.get("idle_max", 1740))
        self.append_limit = int(imap.get("append_limit", 50 * 1024 * 1024))
        self.auth_failure_delay = float(imap.get("auth_failure_delay", 1.0))
        self.plaintext_auth_loopback = bool(imap.get("plaintext_auth_loopback", True))
        self.hostname = cfg.hostname if cfg is not None else "localhost"


def _is_loopback(host: str) -> bool:
    return host == "::1" or host.startswith("127.") or host.startswith("::ffff:127.")


def internaldate_text(ts: float) -> bytes:
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (t.tm_mday, MONTHS[t.tm_mon - 1].encode(),
                                                      t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


class CommandError(Exception):
    """Answer the current command with ``<tag> <status> <text>``."""

    def __init__(self, status: str, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def _no(text):
    return CommandError("NO", text)


def _bad(text):
    return CommandError("BAD", text)


def _whole(seqs, uid: bool, view) -> bool:
    """Does the sequence set cover every message of the view (``1:*``)?"""
    n = len(view)
    if not n:
        return False
    rs = seqs.resolve(view[-1] if uid else n)
    if len(rs) != 1:
        return False
    if uid:
        return rs[0][0] <= view[0] and rs[0][1] >= view[-1]
    return rs[0][0] == 1 and rs[0][1] == n


@implementer(IPushProducer)
class IMAPServerProtocol(Protocol):
    def __init__(self, ctx, settings: Settings, implicit_tls: bool, registry):
        self.ctx = ctx
        self.settings = settings
        self.implicit_tls = implicit_tls
        self.registry = registry
        self.state = NOT_AUTH
        self.user = None
        self._logout = None
        self.selected: SelectedMailbox | None = None
        self._sel_token = None
        self.framer = CommandFramer(self._literal_limit,
                                    max_command=settings.append_limit + 1024 * 1024)
        self._queue: deque = deque()
        self._out: list[bytes] = []
        self._after_send: list = []  # log lines written once the reply is sent (_flush)
        self._busy = False
        self._paused = False
        self._resume = None
        self._cont = None        # handler for the next client line (AUTHENTICATE, IDLE)
        self._idle_tag = None
        self._idle_push_call = None
        self._timer = None
        self.condstore = False
        self.qresync = False
        self.utf8 = False
        self.peer = "?"
        self.tls = implicit_tls
        self._reading_paused = False

    # -- connection --------------------------------------------------------------------
    def connectionMade(self):
        t = self.transport
        peer = t.getPeer()
        self.peer = getattr(peer, "host", "?")
        for tr in (t, getattr(t, "transport", None)):
            try:
                if tr is not None and hasattr(tr, "setTcpNoDelay"):
                    tr.setTcpNoDelay(True)
            except Exception:
                pass
        t.registerProducer(self, True)
        self._write(b"* OK [CAPABILITY " + self.capabilities() + b"] " +
                    self.settings.hostname.encode() + b" mailhub IMAP ready\r\n")
        self._flush()
        self._reset_timer()
        # logged after the greeting is sent: the client does not wait for the log write
        log.info("imap connect from {peer}{tls}", peer=self.peer, tls=" (TLS)" if self.tls else "")

    def connectionLost(self, reason=None):
        self.state = LOGOUT
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._idle_push_call is not None and self._idle_push_call.active():
            self._idle_push_call.cancel()
        abort = getattr(self, "_abort_call", None)
        if abort is not None and abort.active():
            abort.cancel()
        self._deselect()
        if self._logout is not None:
            self._logout()
            self._logout = None
        log.info("imap disconnect {peer} {user}", peer=self.peer,
                 user=self.user.address if self.user else "")

    def _reset_timer(self):
        timeout = self.settings.idle_max if self._idle_tag is not None else self.settings.idle_timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.ctx.reactor.callLater(timeout, self._timed_out)

    def _timed_out(self):
        self._timer = None
        self._out = [b"* BYE Autologout; idle for too long\r\n"]
        self._flush()
        self._close()

    def _close(self):
        """Close after the output is written. The producer is unregistered first: a TLS
        transport only sends close_notify once no producer is registered."""
        t = self.transport
        if t is None:
            return
        try:
            t.unregisterProducer()
        except Exception:
            pass
        t.loseConnection()
        abort = getattr(t, "abortConnection", None)
        if abort is not None:
            call = self.ctx.reactor.callLater(10, lambda: abort() if self.transport is not None
                                              and getattr(t, "connected", False) else None)
            self._abort_call = call

    # producer interface: the transport pauses us when its buffer is full
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        r, self._resume = self._resume, None
        if r is not None:
            r()

    def stopProducing(self):
        self._paused = True

    def _write(self, data: bytes):
        self._out.append(data)

    def _flush(self):
        if self._out:
            data = b"".join(self._out)
            self._out = []
            if self.transport is not None:
                write_now(self.transport, data)
        if self._after_send:
            after, self._after_send = self._after_send, []
            for f in after:
                f()

    # -- input -------------------------------------------------------------------------
    def _literal_limit(self, first_line: bytes) -> int:
        if command_name(first_line) == "APPEND":
            return self.settings.append_limit
        return SMALL_LITERAL

    def dataReceived(self, data: bytes):
        if self.state == LOGOUT:
            return
        self._reset_timer()
        self._queue.extend(self.framer.feed(data))
        if len(self._queue) > 100 and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        self._process()

    def _process(self):
        while self._queue and (not self._busy or self._cont is not None) and self.state != LOGOUT:
            kind, value = self._queue.popleft()
            try:
                if kind == "command":
                    self._command(value)
                elif kind == "continue":
                    self._write(b"+ OK\r\n")
                elif kind == "toobig":
                    tag = parse_tag(value) or "*"
                    if command_name(value) == "APPEND":
                        self._write(f"{tag} NO [TOOBIG] Message too large (APPENDLIMIT "
                                    f"{self.settings.append_limit})\r\n".encode())
                    else:
                        self._write(f"{tag} BAD Literal too large\r\n".encode())
                elif kind == "toolong":
                    self._write(b"* BAD Command line too long\r\n")
            except Exception:
                log.failure("imap internal error")
                self._write(b"* BAD Internal server error\r\n")
        if self._reading_paused and len(self._queue) < 20 and self.state != LOGOUT:
            self._reading_paused = False
            self.transport.resumeProducing()
        self._flush()

    def _command(self, line: bytes):
        if self._cont is not None:
            handler, self._cont = self._cont, None
            handler(line)
            return
        try:
            cmd = parse_command(line)
        except ParseError as e:
            tag = e.tag or "*"
            self._write(f"{tag} BAD {e}\r\n".encode())
            return
        spec = COMMANDS.get(cmd.name)
        if spec is None or self.state not in spec[1]:
            what = "No mailbox selected" if self.state == AUTH and spec and spec[1] == SEL else (
                "Not logged in" if self.state == NOT_AUTH else "Command not valid in this state")
            self._write(f"{cmd.tag} BAD {what}\r\n".encode())
            return
        try:
            result = spec[0](self, cmd)
        except CommandError as e:
            self._finish(cmd, e.status, e.text)
            return
        except BadSequence as e:
            self._finish(cmd, "BAD", str(e))
            return
        except (FolderError, StoreError) as e:
            self._finish(cmd, "NO", str(e))
            return
        except OSError as e:
            log.failure("imap {cmd} failed", cmd=cmd.name)
            self._finish(cmd, "NO", f"[SERVERBUG] {e.strerror or e}")
            return
        except Exception:
            log.failure("imap {cmd} failed", cmd=cmd.name)
            self._finish(cmd, "NO", "[SERVERBUG] Internal error")
            return
        if isinstance(result, defer.Deferred):
            self._busy = True

            def done(res):
                self._busy = False
                if isinstance(res, tuple):
                    self._finish(cmd, *res)
                if self.state != LOGOUT:
                    self._process()
                return None

            def failed(f):
                if f.check(CommandError):
                    return done((f.value.status, f.value.text))
                if f.check(FolderError, StoreError):
                    return done(("NO", str(f.value)))
                log.failure("imap command failed", f)
                return done(("NO", "Internal error"))

            result.addCallbacks(done, failed)
        elif isinstance(result, tuple):
            self._finish(cmd, *result)

    def _finish(self, cmd, status: str, text: str, code: str = ""):
        if self.selected is not None and self.state == SELECTED:
            allow = cmd.uid or cmd.name not in ("FETCH", "STORE", "SEARCH")
            self._send_updates(allow)
        if code:
            text = f"[{code}] {text}"
        self._write(f"{cmd.tag} {status} {text}\r\n".encode("utf-8", "replace"))

    def _send_updates(self, allow_expunge: bool = True, announced_only: bool = False):
        sel = self.selected
        try:
            if announced_only:
                sel.index.sync_announced()
            else:
                sel.index.sync()
        except FileNotFoundError:
            self._write(b"* BYE Selected mailbox was deleted\r\n")
            self._flush()
            self.state = LOGOUT
            self._close()
            return
        except OSError as e:
            log.warn("imap: cannot check {path}: {err}", path=str(sel.index.path), err=e)
            return
        self._out.extend(sel.updates(allow_expunge, self.condstore, self.qresync))

    # -- helpers -----------------------------------------------------------------------
    def capabilities(self) -> bytes:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.state == NOT_AUTH:
            if not self.tls:
                caps.append("STARTTLS")
            if self._plaintext_ok():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "SPECIAL-USE", "UNSELECT", "CHILDREN",
                     "LIST-EXTENDED", "LIST-STATUS", f"APPENDLIMIT={self.settings.append_limit}",
                     "MULTIAPPEND", "CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "STATUS=SIZE"]
        return " ".join(caps).encode()

    def _plaintext_ok(self) -> bool:
        return self.tls or (self.settings.plaintext_auth_loopback and _is_loopback(self.peer))

    def _mbox_in(self, raw: bytes) -> str:
        try:
            if self.utf8:
                name = raw.decode("utf-8")
            else:
                name = raw.decode("ascii").encode("ascii").decode("imap4-utf-7")
        except (UnicodeError, ValueError):
            raise _no("Mailbox name is not valid modified UTF-7")
        if name.upper() == "INBOX":
            return "INBOX"
        if name[:6].upper() == "INBOX" + DELIMITER:
            name = "INBOX" + name[5:]
        return name

    def _mbox_out(self, name: str) -> bytes:
        if self.utf8:
            return quote_string(name.encode("utf-8"))
        return quote_string(name.encode("imap4-utf-7"))

    def _store(self):
        return self.ctx.store

    def _addr(self) -> str:
        return self.user.address

    # -- any state ---------------------------------------------------------------------
    def cmd_capability(self, cmd):
        self._write(b"* CAPABILITY " + self.capabilities() + b"\r\n")
        return ("OK", "Capability completed")

    def cmd_noop(self, cmd):
        return ("OK", "NOOP completed")

    def cmd_logout(self, cmd):
        self._write(b"* BYE Logging out\r\n")
        self._write(f"{cmd.tag} OK Logout completed\r\n".encode())
        self._flush()
        self.state = LOGOUT
        self._close()

    def cmd_id(self, cmd):
        items = cmd.args[0]
        if items:
            pairs = dict(zip(items[::2], items[1::2]))
            log.info("imap client id {peer}: {id}", peer=self.peer,
                     id={k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")[:64]
                         for k, v in list(pairs.items())[:30]})
        self._write(b'* ID ("name" "mailhub" "vendor" "mailhub")\r\n')
        return ("OK", "ID completed")

    def cmd_starttls(self, cmd):
        if self.tls:
            raise _bad("TLS is already active")
        if self.ctx.tls_options is None:
            raise _no("TLS not available")
        self._write(f"{cmd.tag} OK Begin TLS negotiation now\r\n".encode())
        self._flush()
        # anything pipelined after STARTTLS was sent in clear text: drop it (CVE-2011-0411)
        self._queue.clear()
        self.framer.reset()
        self.transport.startTLS(self.ctx.tls_options)
        self.tls = True

    def cmd_login(self, cmd):
        if not self._plaintext_ok():
            raise _no("[PRIVACYREQUIRED] Plaintext authentication disallowed without TLS "
                      "(use STARTTLS)")
        user, pw = cmd.args
        return self._authenticate(user, pw)

    def cmd_authenticate(self, cmd):
        mech, initial = cmd.args
        if mech != "PLAIN":
            raise _no("Unsupported authentication mechanism")
        if not self._plaintext_ok():
            raise _no("[PRIVACYREQUIRED] Plaintext authentication disallowed without TLS")
        if initial is not None:
            return self._auth_plain(initial)
        d = defer.Deferred()

        def response(line: bytes):
            if line.strip() == b"*":
                d.callback(("BAD", "Authentication cancelled"))
                return
            r = self._auth_plain(line.strip())
            if isinstance(r, defer.Deferred):
                r.chainDeferred(d)
            else:
                d.callback(r)

        self._cont = response
        self._write(b"+ \r\n")
        self._flush()
        return _ContinuationWait(d, self)

    def _auth_plain(self, b64: bytes):
        try:
            raw = base64.b64decode(b64, validate=True) if b64 not in (b"", b"=") else b""
        except (binascii.Error, ValueError):
            return ("BAD", "Invalid base64")
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            return ("NO", "[AUTHENTICATIONFAILED] Invalid PLAIN response")
        authz, user, pw = parts
        if authz and authz != user:
            return ("NO", "[AUTHORIZATIONFAILED] Proxy authentication not allowed")
        return self._authenticate(user, pw)

    def _authenticate(self, user: bytes, pw: bytes):
        login = user.decode("utf-8", "replace")
        throttle = self.ctx.throttle
        if throttle is not None and throttle.blocked(self.peer, login):
            log.info("imap login refused (throttled) {peer} {login}", peer=self.peer, login=login)
            return ("NO", "[UNAVAILABLE] Too many failed logins; try again later")
        d = self.ctx.portal.login(UsernamePassword(user, pw), None, IMailUser)
        held: list = []  # the prefetched INBOX index, released when the login ends
        pending = None
        if not d.called:
            # on the next reactor turn: the Argon2 thread takes the GIL first and runs
            pending = self.ctx.reactor.callLater(0, self._prefetch_inbox, login, held)

        def done_prefetch():
            if pending is not None and pending.active():
                pending.cancel()
            while held:
                self.registry.release(held.pop())

        def ok(result):
            done_prefetch()
            _iface, avatar, logout = result
            if self.state == LOGOUT:
                logout()
                return ("NO", "Connection closed")
            self.user = avatar
            self._logout = logout
            self.state = AUTH
            if throttle is not None:
                throttle.success(self.peer, login)
            self._after_send.append(lambda: log.info("imap login {user} from {peer}",
                                                     user=avatar.address, peer=self.peer))
            return ("OK", f"[CAPABILITY {self.capabilities().decode()}] Logged in")

        def failed(f):
            done_prefetch()
            f.trap(UnauthorizedLogin)
            delay = throttle.failure(self.peer, login) if throttle is not None else 0
            delay = min(delay, self.settings.auth_failure_delay) if self.settings.auth_failure_delay >= 0 else delay
            log.info("imap login failed {login} from {peer}", login=login, peer=self.peer)
            result = ("NO", "[AUTHENTICATIONFAILED] Authentication failed")
            if delay > 0:
                waited = defer.Deferred()
                self.ctx.reactor.callLater(delay, waited.callback, result)
                return waited
            return result

        return d.addCallbacks(ok, failed)

    def _prefetch_inbox(self, login: str, held: list) -> None:
        """While the password is checked (Argon2 runs on another thread, ~14 ms), open the
        user's INBOX index on this one: nearly every client SELECTs INBOX next, and after a
        restart that SELECT would otherwise load the index then. Only for an existing user;
        the index is held (in ``held``) until the login ends, then kept warm in the
        registry's LRU. Any problem just means no prefetch."""
        if self.state == LOGOUT:
            return
        try:
            found = self.ctx.directory.password_hash(login)
            if found is None:
                return
            idx = self.registry.acquire(self._store().folder(found[0], "INBOX"))
        except Exception:  # noqa: BLE001 - an optimisation: never fail the login for it
            return
        held.append(idx)
        try:
            idx.sync()
        except Exception:  # noqa: BLE001
            pass

    # -- authenticated -----------------------------------------------------------------
    def cmd_enable(self, cmd):
        enabled = []
        for cap in cmd.args[0]:
            if cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(cap)
            elif cap == "QRESYNC" and not self.qresync:
                self.qresync = True
                self.condstore = True
                enabled.append(cap)
            elif cap in ("UTF8=ACCEPT", "UTF8=ONLY") and not self.utf8:
                self.utf8 = True
                enabled.append("UTF8=ACCEPT")
        self._write(b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n")
        return ("OK", "Enabled")

    def cmd_namespace(self, cmd):
        self._write(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
        return ("OK", "Namespace completed")

    def _deselect(self):
        if self._sel_token is not None:
            self.ctx.events.unsubscribe(self._sel_token)
            self._sel_token = None
        if self.selected is not None:
            self.registry.release(self.selected.index)
            self.selected = None

    def cmd_select(self, cmd):
        name_raw, params = cmd.args
        name = self._mbox_in(name_raw)
        readonly = cmd.name == "EXAMINE"
        if self.selected is not None:
            self._deselect()
            self.state = AUTH
            self._write(b"* OK [CLOSED] Previous mailbox closed\r\n")
        try:
            folder = self._store().folder(self._addr(), name)
        except FolderError:
            raise _no("[NONEXISTENT] Mailbox does not exist")
        idx = self.registry.acquire(folder)
        try:
            idx.sync()
        except FileNotFoundError:
            self.registry.release(idx)
            raise _no("[NONEXISTENT] Mailbox does not exist")
        if "CONDSTORE" in params:
            self.condstore = True
        qr = params.get("QRESYNC")
        if qr is not None and not self.qresync:
            self.registry.release(idx)
            raise _bad("QRESYNC is not enabled")
        sel = SelectedMailbox(idx, readonly)
        self.selected = sel
        self.state = SELECTED
        self._sel_token = self.ctx.events.subscribe(folder.address, folder.name, self._on_event)
        w = self._write
        fl = sel.flags_lines()
        w(fl[0])
        w(b"* %d EXISTS\r\n* %d RECENT\r\n" % (sel.exists, len(sel.recent)))
        first_unseen = next((i + 1 for i, f in enumerate(idx.flags) if "S" not in f), 0)
        if first_unseen:
            w(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
        w(b"* OK [UIDVALIDITY %d] UIDs valid\r\n* OK [UIDNEXT %d] Predicted next UID\r\n"
          % (idx.uidvalidity, idx.uidnext))
        w(fl[1])
        w(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % idx.highestmodseq)
        if qr is not None:
            self._qresync_select(sel, *qr)
        return ("OK", "[READ-ONLY] Examine completed" if readonly else "[READ-WRITE] Select completed")

    def _qresync_select(self, sel, uidvalidity, modseq, known, seqmatch):
        idx = sel.index
        if uidvalidity != idx.uidvalidity:
            return
        self._vanished_earlier(idx, modseq, known)
        for i, (u, m) in enumerate(zip(idx.uids, idx.modseqs)):
            if m > modseq and (known is None or known.contains(u, idx.uidnext)):
                self._write(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
                    i + 1, u, flags_bytes(idx, idx.flags[i], u in sel.recent, sel.flag_cache), m))

    def _vanished_earlier(self, idx, modseq, uidset):
        if idx.expunged and idx.expunged[0][0] <= modseq + 1 or modseq >= idx.highestmodseq:
            gone = [u for m, u in idx.expunged if m > modseq]
        else:
            # history was compacted away: report every UID we no longer have
            present = set(idx.uids)
            gone = [u for u in range(1, idx.uidnext) if u not in present]
        if uidset is not None:
            gone = [u for u in gone if uidset.contains(u, idx.uidnext - 1 or 1)]
        if gone:
            self._write(b"* VANISHED (EARLIER) " + seqset_text(gone).encode() + b"\r\n")

    def _on_event(self, address, folder, what):
        sel = self.selected
        if sel is None:
            return
        sel.index.invalidate(what)
        if what == "deleted":
            sel.index._dirty_all = True
        if self._idle_tag is not None and (self._idle_push_call is None or not self._idle_push_call.active()):
            self._idle_push_call = self.ctx.reactor.callLater(0, self._idle_push)

    def _idle_push(self):
        self._idle_push_call = None
        if self._idle_tag is None or self.selected is None or self.state == LOGOUT:
            return
        self._send_updates(True, announced_only=True)
        self._flush()

    def cmd_create(self, cmd):
        name = self._mbox_in(cmd.args[0])
        if name.endswith(DELIMITER):
            name = name.rstrip(DELIMITER)
        if name == "INBOX" or name in self._store().list_folders(self._addr()):
            raise _no("[ALREADYEXISTS] Mailbox already exists")
        try:
            self._store().create_folder(self._addr(), name)
        except FolderError as e:
            raise _no(f"[CANNOT] {e}")
        self._store().set_subscribed(self._addr(), name, True)
        log.info("imap create {user} {name}", user=self._addr(), name=name)
        return ("OK", "Create completed")

    def cmd_delete(self, cmd):
        name = self._mbox_in(cmd.args[0])
        if name == "INBOX":
            raise _no("[CANNOT] INBOX cannot be deleted")
        store = self._store()
        try:
            folder = store.folder(self._addr(), name)
        except FolderError:
            raise _no("[NONEXISTENT] Mailbox does not exist")
        if self.selected is not None and self.selected.index.path == folder.path:
            self._deselect()
            self.state = AUTH
        self.registry.forget(folder.path)
        store.delete_folder(self._addr(), name)
        return ("OK", "Delete completed")

    def cmd_rename(self, cmd):
        old = self._mbox_in(cmd.args[0])
        new = self._mbox_in(cmd.args[1]).rstrip(DELIMITER)
        store = self._store()
        try:
            src = store.folder(self._addr(), old)
        except FolderError:
            raise _no("[NONEXISTENT] Mailbox does not exist")
        if new in store.list_folders(self._addr()) or new.upper() == "INBOX":
            raise _no("[ALREADYEXISTS] Target mailbox exists")
        for name in store.list_folders(self._addr()):
            if name == old or name.startswith(old + DELIMITER):
                try:
                    self.registry.forget(store.folder(self._addr(), name).path)
                except FolderError:
                    pass
        if self.selected is not None and old != "INBOX" and (
                self.selected.index.path == src.path):
            self._deselect()
            self.state = AUTH
        try:
            store.rename_folder(self._addr(), old, new)
        except FolderError as e:
            raise _no(f"[CANNOT] {e}")
        subs = store.subscriptions(self._addr())
        for s in subs:
            if old != "INBOX" and (s == old or s.startswith(old + DELIMITER)):
                store.set_subscribed(self._addr(), s, False)
                store.set_subscribed(self._addr(), new + s[len(old):], True)
        if old == "INBOX":
            store.set_subscribed(self._addr(), new, True)
        return ("OK", "Rename completed")

    def cmd_subscribe(self, cmd):
        name = self._mbox_in(cmd.args[0])
        subscribe = cmd.name == "SUBSCRIBE"
        try:
            self._store().set_subscribed(self._addr(), name, subscribe)
        except FolderError as e:
            raise _no(str(e))
        return ("OK", f"{cmd.name.capitalize()} completed")

    # LIST ----------------------------------------------------------------------------
    @staticmethod
    def _pattern_re(pattern: str):
        out = []
        for ch in pattern:
            if ch == "*":
                out.append(".*")
            elif ch == "%":
                out.append("[^" + re.escape(DELIMITER) + "]*")
            else:
                out.append(re.escape(ch))
        return re.compile("".join(out) + r"\Z", re.S)

    def _matcher(self, ref: str, patterns: list[str]):
        regs = []
        for pat in patterns:
            full = ref + pat if not pat.startswith(DELIMITER) or not ref else ref + pat
            if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (DELIMITER, "*", "%")):
                full = "INBOX" + full[5:]
            regs.append(self._pattern_re(full))
        return lambda name: any(r.match(name) for r in regs)

    def cmd_list(self, cmd):
        selection, ref_raw, pats_raw, returns, status_items = cmd.args
        ref = self._mbox_in(ref_raw) if ref_raw else ""
        pats = [self._mbox_in(p) if p else "" for p in pats_raw]
        if not selection and not returns and pats == [""]:
            self._write(b'* LIST (\\Noselect) "." ""\r\n')
            return ("OK", "List completed")
        for s in selection:
            if s not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                raise _bad(f"Unknown LIST selection option {s}")
        if "RECURSIVEMATCH" in selection and len(selection) == 1:
            raise _bad("RECURSIVEMATCH needs another selection option")
        store = self._store()
        addr = self._addr()
        folders = store.list_folders(addr)
        exist = set(folders)
        subs = set(store.subscriptions(addr))
        want_subscribed = "SUBSCRIBED" in selection or "SUBSCRIBED" in returns
        match = self._matcher(ref, [p for p in pats if p])
        names = [n for n in folders if match(n)]
        childinfo: set[str] = set()
        if "SUBSCRIBED" in selection:
            names = [n for n in names if n in subs] + sorted(
                n for n in subs if n not in exist and match(n))
            if "RECURSIVEMATCH" in selection:
                # RFC 5258: parents matching the pattern whose descendants are subscribed
                for sub in subs:
                    parts = sub.split(DELIMITER)
                    for k in range(1, len(parts)):
                        parent = DELIMITER.join(parts[:k])
                        if match(parent):
                            childinfo.add(parent)
                names += sorted(n for n in childinfo if n not in names)
        if "SPECIAL-USE" in selection:
            names = [n for n in names if n in SPECIAL_FOLDERS]
        for n in names:
            attrs = []
            if n not in exist:
                attrs.append("\\NonExistent")
            else:
                prefix = n + DELIMITER
                attrs.append("\\HasChildren" if any(f.startswith(prefix) for f in folders)
                             else "\\HasNoChildren")
            if want_subscribed and n in subs:
                attrs.append("\\Subscribed")
            su = SPECIAL_FOLDERS.get(n)
            if su and n in exist:
                attrs.append(su)
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if n in childinfo else b""
            self._write(b"* LIST (" + " ".join(attrs).encode() + b') "." ' + self._mbox_out(n) +
                        extra + b"\r\n")
            if status_items and n in exist:
                self._status_line(n, status_items)
        return ("OK", "List completed")

    def cmd_lsub(self, cmd):
        ref_raw, pat_raw = cmd.args
        ref = self._mbox_in(ref_raw) if ref_raw else ""
        pat = self._mbox_in(pat_raw) if pat_raw else ""
        if not pat:
            self._write(b'* LSUB (\\Noselect) "." ""\r\n')
            return ("OK", "Lsub completed")
        match = self._matcher(ref, [pat])
        subs = self._store().subscriptions(self._addr())
        subset = set(subs)
        noselect = set()
        for n in subs:
            if match(n):
                self._write(b'* LSUB () "." ' + self._mbox_out(n) + b"\r\n")
                continue
            # RFC 3501 6.3.9: an unsubscribed parent matched by "%" shows as \Noselect
            parts = n.split(DELIMITER)
            for k in range(1, len(parts)):
                parent = DELIMITER.join(parts[:k])
                if parent not in subset and parent not in noselect and match(parent):
                    noselect.add(parent)
                    self._write(b'* LSUB (\\Noselect) "." ' + self._mbox_out(parent) + b"\r\n")
        return ("OK", "Lsub completed")

    def _status_line(self, name: str, items) -> None:
        try:
            folder = self._store().folder(self._addr(), name)
        except FolderError:
            raise _no("[NONEXISTENT] Mailbox does not exist")
        idx = self.registry.acquire(folder)
        try:
            idx.sync()
            st = idx.status()
            if self.selected is not None and self.selected.index is idx:
                st["RECENT"] = len(self.selected.recent)
            out = []
            for it in items:
                if it == "SIZE":
                    v = sum(idx.size(i) for i in range(len(idx.uids)))
                elif it == "APPENDLIMIT":
                    v = self.settings.append_limit
                else:
                    v = st[it]
                out.append(f"{it} {v}")
            if "HIGHESTMODSEQ" in items:
                self.condstore = True
        except FileNotFoundError:
            raise _no("[NONEXISTENT] Mailbox does not exist")
        finally:
            self.registry.release(idx)
        self._write(b"* STATUS " + self._mbox_out(name) + b" (" + " ".join(out).encode() + b")\r\n")

    def cmd_status(self, cmd):
        name = self._mbox_in(cmd.args[0])
        self._status_line(name, cmd.args[1])
        return ("OK", "Status completed")

    # APPEND ---------------------------------------------------------------------------
    def cmd_append(self, cmd):
        name = self._mbox_in(cmd.args[0])
        messages = cmd.args[1]
        store = self._store()
        try:
            folder = store.folder(self._addr(), name)
        except FolderError:
            raise _no("[TRYCREATE] Mailbox does not exist")
        idx = self.registry.acquire(folder)
        writers = []
        try:
            idx.sync()
            for flags, when, data in messages:
                if not data:
                    raise _no("Empty message")
                if len(data) > self.settings.append_limit:
                    raise _no("[TOOBIG] Message too large")
                letters = idx.letters_for(flags)
                if letters is None:
                    raise _no("[LIMIT] Too many keywords in this mailbox")
                if b"\n" in data and data.count(b"\n") != data.count(b"\r\n"):
                    data = re.sub(rb"\r?\n", b"\r\n", data)
                mtime = when.timestamp() if when is not None else None
                w = store.new_message(self._addr(), name, flags=letters, mtime=mtime)
                w.write(data)
                writers.append(w)
        except Exception:
            for w in writers:
                w.abort()
            self.registry.release(idx)
            raise
        finals = [w.final_path() for w in writers]
        token = idx.own_change_begin()
        d = store.commit(writers)

        def committed(keys):
            try:
                uids = []
                for key, path in zip(keys, finals):
                    uids.append(idx.add_file(key, path.parent.name, path.name))
                idx.own_change_end(token)
                log.info("imap append {user} {folder} {keys}", user=self._addr(), folder=name,
                         keys=",".join(keys))
                return ("OK", f"[APPENDUID {idx.uidvalidity} {ordered_set_text(uids)}] Append completed")
            finally:
                self.registry.release(idx)

        def failed(f):
            self.registry.release(idx)
            f.trap(StoreError)
            return ("NO", f"[SERVERBUG] {f.value}")

        return d.addCallbacks(committed, failed)

    # IDLE ----------------------------------------------------------------------------
    def cmd_idle(self, cmd):
        self._idle_tag = cmd.tag
        if self.selected is not None:
            self._send_updates(True)
        self._write(b"+ idling\r\n")
        self._flush()
        self._reset_timer()
        d = defer.Deferred()

        def done(line: bytes):
            self._idle_tag = None
            self._reset_timer()
            if line.strip().upper() != b"DONE":
                d.callback(("BAD", "Expected DONE"))
            else:
                d.callback(("OK", "Idle completed"))

        self._cont = done
        return _ContinuationWait(d, self)

    # -- selected ----------------------------------------------------------------------
    def cmd_check(self, cmd):
        return ("OK", "Check completed")

    def cmd_close(self, cmd):
        sel = self.selected
        if not sel.readonly:
            sel.index.sync()
            pos = [i for i, f in enumerate(sel.index.flags) if "T" in f]
            sel.index.expunge(pos)
        self._deselect()
        self.state = AUTH
        return ("OK", "Close completed")

    def cmd_unselect(self, cmd):
        self._deselect()
        self.state = AUTH
        return ("OK", "Unselect completed")

    def cmd_expunge(self, cmd):
        sel = self.selected
        if sel.readonly:
            raise _no("[READ-ONLY] Mailbox is read-only")
        sel.index.sync()
        idx = sel.index
        if cmd.uid:
            targets = [p for _s, _u, p in sel.resolve(cmd.args[0], True) if p >= 0]
            pos = [p for p in targets if "T" in idx.flags[p]]
        else:
            pos = [i for i, f in enumerate(idx.flags) if "T" in f]
        idx.expunge(pos)
        return ("OK", "Expunge completed")

    def cmd_search(self, cmd):
        charset, program, returns = cmd.args
        if charset not in (None, "UTF-8", "US-ASCII"):
            raise _no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        if returns is not None:
            raise _bad("SEARCH RETURN is not supported")
        sel = self.selected
        idx = sel.index
        largest_seq = sel.exists
        largest_uid = sel.view[-1] if len(sel.view) else 0
        uses_modseq = "MODSEQ" in repr(program)
        if uses_modseq:
            self.condstore = True
        hits = []
        rh = lambda q: read_header(idx, q)  # noqa: E731
        ra = lambda q: read_all(idx, q)  # noqa: E731
        re_ = lambda q: envelope_fields(idx, q)  # noqa: E731
        recent = sel.recent
        program = S.precompute(program, idx, re_)
        if program[0] == "AND" and len(program[1]) == 1 and program[1][0][0] == "UIDS":
            # a lone header key (UID SEARCH FROM x): the answer is the UID set
            for u in sorted(program[1][0][1]):
                seq = sel.seq_of_uid(u)
                if seq:
                    hits.append(u if cmd.uid else seq)
            view = sel.view[:0]
        else:
            view = sel.view
        state = {"maxmod": 0}

        def slices():
            # positions are looked up per slice: between slices the reactor runs, and other
            # sessions may append or expunge (our own view does not change until we finish)
            for start in range(0, len(view), 500):
                same = view is idx.uids
                for i in range(start, min(start + 500, len(view))):
                    u = view[i]
                    p = i if same else idx.pos(u)
                    if p < 0:
                        continue
                    ctx = S.MessageContext(idx, p, i + 1, u, u in recent, rh, ra, re_)
                    if S.matches(program, ctx, largest_seq, largest_uid):
                        hits.append(u if cmd.uid else i + 1)
                        if uses_modseq:
                            state["maxmod"] = max(state["maxmod"], idx.modseqs[p])
                yield

        def finish():
            if idx.cache.loaded:  # (idx.keys would build the key list after a restart)
                idx.cache.flush(idx.keys)
            line = b"* SEARCH" + b"".join(b" %d" % h for h in hits)
            if uses_modseq and hits:
                line += b" (MODSEQ %d)" % state["maxmod"]
            self._write(line + b"\r\n")
            return ("OK", "Search completed")

        gen = slices()
        if len(view) <= 2000:
            for _ in gen:
                pass
            return finish()
        return self._run_slices(gen, finish)

    def _run_slices(self, gen, finish, budget: float = 0.01):
        """Run a long computation in slices of ``budget`` seconds, letting the reactor serve
        other sessions (and IDLE pushes) in between."""
        d = defer.Deferred()

        def step():
            if self.state == LOGOUT:
                d.callback(None)
                return
            t_end = time.monotonic() + budget
            try:
                while time.monotonic() < t_end:
                    next(gen)
            except StopIteration:
                try:
                    d.callback(finish())
                except Exception as e:
                    d.errback(e)
                return
            except Exception as e:
                d.errback(e)
                return
            self.ctx.reactor.callLater(0, step)

        step()
        return d

    def cmd_store(self, cmd):
        seqs, mode, silent, flags, unchangedsince = cmd.args
        sel = self.selected
        if sel.readonly:
            raise _no("[READ-ONLY] Mailbox is read-only")
        idx = sel.index
        idx.sync()
        targets = sel.resolve(seqs, cmd.uid)
        letters = idx.letters_for(flags)
        if letters is None:
            raise _no("[LIMIT] Too many keywords in this mailbox")
        want_recent = any(f.lower() == "\\recent" for f in flags)
        if unchangedsince is not None:
            self.condstore = True
        changes = []
        modified = []
        unchanged = []
        for seq, uid, p in targets:
            if p < 0:
                continue
            if unchangedsince is not None and idx.modseqs[p] > unchangedsince:
                modified.append(uid if cmd.uid else seq)
                continue
            cur = idx.flags[p]
            if mode == "+":
                new = "".join(sorted(set(cur) | set(letters)))
            elif mode == "-":
                new = "".join(sorted(set(cur) - set(letters)))
            else:
                new = letters
            if new != cur:
                changes.append((p, new))
            else:
                unchanged.append((seq, uid, p))
        changed = set(idx.set_flags(changes))
        for seq, uid, p in targets:
            if p < 0 or (uid if cmd.uid else seq) in modified:
                continue
            if p in changed:
                sel.reported[uid] = idx.modseqs[p]
            if silent and unchangedsince is None:
                continue
            items = []
            if cmd.uid:
                items.append(b"UID %d" % uid)
            items.append(b"FLAGS " + flags_bytes(idx, idx.flags[p], uid in sel.recent, sel.flag_cache))
            if self.condstore:
                items.append(b"MODSEQ (%d)" % idx.modseqs[p])
            self._write(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
        del want_recent
        if modified:
            return ("OK", f"[MODIFIED {seqset_text(modified)}] Conditional STORE failed")
        return ("OK", "Store completed")

    def cmd_copy(self, cmd):
        seqs, target_raw = cmd.args
        sel = self.selected
        name = self._mbox_in(target_raw)
        store = self._store()
        is_move = cmd.name == "MOVE"
        if is_move and sel.readonly:
            raise _no("[READ-ONLY] Mailbox is read-only")
        try:
            folder = store.folder(self._addr(), name)
        except FolderError:
            raise _no("[TRYCREATE] Mailbox does not exist")
        src = sel.index
        src.sync()
        targets = [(s, u, p) for s, u, p in sel.resolve(seqs, cmd.uid) if p >= 0]
        dst = self.registry.acquire(folder)
        try:
            dst.sync()
            src_uids, dst_uids, moved_pos = [], [], []
            for _s, u, p in targets:
                letters = src.flags[p]
                if any("a" <= c <= "z" for c in letters):
                    letters = dst.letters_for(src.flag_names(letters)) or "".join(
                        c for c in letters if c.isupper())
                new_uid = src.copy_to(p, dst, letters)
                if new_uid is None:
                    continue
                src_uids.append(u)
                dst_uids.append(new_uid)
                moved_pos.append(p)
            if dst_uids:
                dst._notify("exists")
            code = ""
            if src_uids:
                code = f"COPYUID {dst.uidvalidity} {ordered_set_text(src_uids)} {ordered_set_text(dst_uids)}"
        finally:
            self.registry.release(dst)
        if not is_move:
            return ("OK", f"[{code}] Copy completed" if code else "Copy completed")
        if code:
            self._write(f"* OK [{code}] Moved\r\n".encode())
        if dst is not src:
            src.expunge(moved_pos)
        else:
            # MOVE into the same folder: the copies stay, the originals go
            src.expunge([src.pos(u) for u in src_uids if src.pos(u) >= 0])
        return ("OK", "Move completed")

    # FETCH ---------------------------------------------------------------------------
    def cmd_fetch(self, cmd):
        seqs, atts, mods = cmd.args
        sel = self.selected
        idx = sel.index
        idx.sync()
        if not cmd.uid and sel.view is not idx.uids:
            pass  # ghost messages (expunged by others) are skipped below
        changedsince = mods.get("CHANGEDSINCE")
        names = [a.name for a in atts]
        if changedsince is not None or "MODSEQ" in names:
            self.condstore = True
        if mods.get("VANISHED"):
            if not cmd.uid or not self.qresync or changedsince is None:
                raise _bad("VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE")
            self._vanished_earlier(idx, changedsince, seqs)
        if "BINARY" in names or "BINARY.SIZE" in names:
            raise _bad("BINARY is not supported")
        if cmd.uid and "UID" not in names:
            atts = [_UID_ATT] + list(atts)
        if changedsince is not None and "MODSEQ" not in names:
            atts = list(atts) + [_MODSEQ_ATT]
        set_seen = not sel.readonly and any(
            a.name in ("RFC822", "RFC822.TEXT") or (a.name == "BODY" and a.section is not None and not a.peek)
            for a in atts)
        need_all = any(
            a.name in ("BODYSTRUCTURE", "RFC822", "RFC822.TEXT") or
            (a.name == "BODY" and (a.section is None or a.section.part or
                                   a.section.text in ("", "TEXT")))
            for a in atts)
        need_header = not need_all and any(
            a.name == "RFC822.HEADER" or a.name == "BODY" for a in atts)
        flags_only = all(a.name in ("UID", "FLAGS", "MODSEQ", "RFC822.SIZE") for a in atts)
        if (flags_only and changedsince is None and not sel.recent and sel.view is idx.uids
                and [a.name for a in atts] == ["UID", "FLAGS"] and _whole(seqs, cmd.uid, idx.uids)):
            self._fetch_all_flags(sel)
            return ("OK", "Fetch completed")
        targets = sel.resolve(seqs, cmd.uid)
        if flags_only:
            self._fetch_simple(sel, targets, atts, changedsince)
            return ("OK", "Fetch completed")
        gen = self._fetch_gen(sel, targets, atts, changedsince, set_seen, need_all, need_header)
        return self._stream(gen, ("OK", "Fetch completed"))

    def _fetch_all_flags(self, sel):
        """(UID) FETCH of every message's UID and FLAGS (every client's start-up resync):
        straight from the index arrays, no per-message tuples, one %-format per 8192 lines
        over the wire bytes of each distinct flag set."""
        idx = sel.index
        flags, uids = idx.flags, idx.uids
        fmap = {f: flags_bytes(idx, f, False, sel.flag_cache) for f in set(flags)}
        get = fmap.__getitem__
        tmpl = b"* %d FETCH (UID %d FLAGS %s)\r\n"
        n = len(uids)
        for a in range(0, n, 8192):
            b = min(n, a + 8192)
            self._out.append(tmpl * (b - a) % tuple(chain.from_iterable(
                zip(range(a + 1, b + 1), uids[a:b], map(get, flags[a:b])))))
            self._flush()

    def _fetch_simple(self, sel, targets, atts, changedsince):
        idx = sel.index
        cache = sel.flag_cache
        recent = sel.recent
        out = self._out
        flags = idx.flags
        modseqs = idx.modseqs
        names = [a.name for a in atts]
        if changedsince is None and names in (["UID", "FLAGS"], ["FLAGS", "UID"]):
            # the start-up resync of every client (UID FETCH 1:* (FLAGS)): one pass, one join
            def fb(letters, uid):
                v = cache.get((letters, uid in recent))
                return v if v is not None else flags_bytes(idx, letters, uid in recent, cache)
            if names[0] == "UID":
                lines = [b"* %d FETCH (UID %d FLAGS %s)\r\n" % (s, u, fb(flags[p], u))
                         for s, u, p in targets if p >= 0]
            else:
                lines = [b"* %d FETCH (FLAGS %s UID %d)\r\n" % (s, fb(flags[p], u), u)
                         for s, u, p in targets if p >= 0]
            for i in range(0, len(lines), 8192):
                out.append(b"".join(lines[i:i + 8192]))
                self._flush()
                out = self._out
            return
        parts = []
        for a in atts:
            parts.append(a.name)
        for seq, uid, p in targets:
            if p < 0:
                continue
            if changedsince is not None and modseqs[p] <= changedsince:
                continue
            items = []
            for n in parts:
                if n == "UID":
                    items.append(b"UID %d" % uid)
                elif n == "FLAGS":
                    items.append(b"FLAGS " + flags_bytes(idx, flags[p], uid in recent, cache))
                elif n == "MODSEQ":
                    items.append(b"MODSEQ (%d)" % modseqs[p])
                else:
                    items.append(b"RFC822.SIZE %d" % idx.size(p))
            out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items)))
            if len(out) > 4096:
                self._flush()
                out = self._out

    def _stream(self, gen, final):
        """Write the chunks of a generator while the transport accepts them."""
        d = defer.Deferred()

        def step():
            t_end = time.monotonic() + 0.02
            try:
                while True:
                    if self.state == LOGOUT:
                        d.callback(None)
                        return
                    if self._paused:
                        self._resume = step
                        return
                    if time.monotonic() > t_end:
                        # let the reactor serve other sessions between chunks
                        self.ctx.reactor.callLater(0, step)
                        return
                    chunk = next(gen)
                    self._out.append(chunk)
                    self._flush()
            except StopIteration:
                d.callback(final)
            except CommandError as e:
                d.callback((e.status, e.text))
            except Exception as e:
                d.errback(e)

        step()
        return d

    def _fetch_gen(self, sel, targets, atts, changedsince, set_seen, need_all, need_header):
        idx = sel.index
        buf = []
        size = 0
        uids_then = idx.uids
        few = len(targets) <= 1000
        for seq, uid, p in targets:
            if idx.uids is not uids_then:
                # the output is spread over reactor turns: if messages came or went
                # meanwhile, positions moved, so look the UID up again
                p = idx.pos(uid)
            if p < 0:
                continue
            if changedsince is not None and idx.modseqs[p] <= changedsince:
                continue
            data = None
            header = None
            msg = None
            if need_all:
                data = read_all(idx, p)
                if data is None:
                    continue
            elif need_header:
                header = read_header(idx, p)
                if header is None:
                    continue
            if set_seen and "S" not in idx.flags[p]:
                if idx.set_flags([(p, "".join(sorted(idx.flags[p] + "S")))]):
                    sel.reported[uid] = idx.modseqs[p]
                if not any(a.name == "FLAGS" for a in atts):
                    atts = list(atts) + [_FLAGS_ATT]
            items = []
            for a in atts:
                n = a.name
                if n == "UID":
                    items.append(b"UID %d" % uid)
                elif n == "FLAGS":
                    items.append(b"FLAGS " + flags_bytes(idx, idx.flags[p], uid in sel.recent, sel.flag_cache))
                elif n == "MODSEQ":
                    items.append(b"MODSEQ (%d)" % idx.modseqs[p])
                elif n == "RFC822.SIZE":
                    items.append(b"RFC822.SIZE %d" % (len(data) if data is not None else idx.size(p)))
                elif n == "INTERNALDATE":
                    items.append(b"INTERNALDATE " + internaldate_text(idx.internaldate(p)))
                elif n == "ENVELOPE":
                    env_cache = idx.envelope_cache
                    key = idx.key(p)
                    env = env_cache.get(key)
                    if env is None and idx.load_envelopes():
                        env_cache = idx.envelope_cache
                        env = env_cache.get(key)
                    if env is not None:
                        items.append(b"ENVELOPE " + env)
                        continue
                    if data is not None:
                        hdrs = M.parse_headers(data[:M.split_message(data)[0]])
                    elif header is not None:
                        hdrs = M.parse_headers(header)
                    elif few and not idx.cache.loaded:
                        # a few envelopes: reading those files beats loading the whole cache
                        hdrs = M.parse_headers(read_header(idx, p) or b"")
                    else:
                        hdrs = M.parse_headers(envelope_fields(idx, p) or b"")
                    env = M.envelope(hdrs)
                    if len(env_cache) >= 50000:
                        env_cache.clear()
                    env_cache[key] = env  # a message never changes: nor does this
                    items.append(b"ENVELOPE " + env)
                elif n in ("BODYSTRUCTURE", "BODY") and a.section is None:
                    if msg is None:
                        msg = M.parse_message(data)
                    items.append(n.encode() + b" " + M.bodystructure(msg, n == "BODYSTRUCTURE"))
                elif n == "RFC822":
                    items.append(b"RFC822 " + literal(data))
                elif n == "RFC822.HEADER":
                    h = header if header is not None else data[:M.split_message(data)[0]]
                    items.append(b"RFC822.HEADER " + literal(h))
                elif n == "RFC822.TEXT":
                    items.append(b"RFC822.TEXT " + literal(data[M.split_message(data)[1]:]))
                elif n == "BODY":
                    sec = a.section
                    if data is not None:
                        if msg is None:
                            msg = M.parse_message(data)
                        content = M.section_bytes(msg, sec)
                    else:
                        if sec.text == "HEADER":
                            content = header
                        elif sec.text == "HEADER.FIELDS":
                            content = M.header_fields(header, [f.lower() for f in sec.fields])
                        else:
                            content = M.header_fields(header, [f.lower() for f in sec.fields], True)
                    label = b"BODY[" + sec.label() + b"]"
                    if content is None:
                        content = b""
                    if a.partial is not None:
                        start, length = a.partial
                        content = content[start:start + length]
                        label += b"<%d>" % start
                    items.append(label + b" " + literal(content))
            chunk = b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))
            buf.append(chunk)
            size += len(chunk)
            if size >= FETCH_CHUNK:
                yield b"".join(buf)
                buf = []
                size = 0
        if idx.cache.loaded:
            idx.cache.flush(idx.keys)
        if buf:
            yield b"".join(buf)


class _ContinuationWait(defer.Deferred):
    """A command waiting for a client continuation line (AUTHENTICATE, IDLE): the session
    is busy for commands but the next line goes to the handler in ``_cont``."""

    def __init__(self, inner: defer.Deferred, proto: IMAPServerProtocol):
        super().__init__()
        self.proto = proto
        inner.addBoth(self._done)

    def _done(self, res):
        self.proto._cont = None
        self.callback(res)
        return None


from mailhub.imapserver.parser import FetchAtt  # noqa: E402

_UID_ATT = FetchAtt("UID")
_MODSEQ_ATT = FetchAtt("MODSEQ")
_FLAGS_ATT = FetchAtt("FLAGS")

P = IMAPServerProtocol
COMMANDS = {
    "CAPABILITY": (P.cmd_capability, ANY), "NOOP": (P.cmd_noop, ANY),
    "LOGOUT": (P.cmd_logout, ANY), "ID": (P.cmd_id, ANY),
    "STARTTLS": (P.cmd_starttls, (NOT_AUTH,)), "LOGIN": (P.cmd_login, (NOT_AUTH,)),
    "AUTHENTICATE": (P.cmd_authenticate, (NOT_AUTH,)),
    "ENABLE": (P.cmd_enable, AUTHED), "NAMESPACE": (P.cmd_namespace, AUTHED),
    "SELECT": (P.cmd_select, AUTHED), "EXAMINE": (P.cmd_select, AUTHED),
    "CREATE": (P.cmd_create, AUTHED), "DELETE": (P.cmd_delete, AUTHED),
    "RENAME": (P.cmd_rename, AUTHED), "SUBSCRIBE": (P.cmd_subscribe, AUTHED),
    "UNSUBSCRIBE": (P.cmd_subscribe, AUTHED), "LIST": (P.cmd_list, AUTHED),
    "LSUB": (P.cmd_lsub, AUTHED), "STATUS": (P.cmd_status, AUTHED),
    "APPEND": (P.cmd_append, AUTHED), "IDLE": (P.cmd_idle, AUTHED),
    "CHECK": (P.cmd_check, SEL), "CLOSE": (P.cmd_close, SEL), "UNSELECT": (P.cmd_unselect, SEL),
    "EXPUNGE": (P.cmd_expunge, SEL), "SEARCH": (P.cmd_search, SEL), "FETCH": (P.cmd_fetch, SEL),
    "STORE": (P.cmd_store, SEL), "COPY": (P.cmd_copy, SEL), "MOVE": (P.cmd_copy, SEL),
}
