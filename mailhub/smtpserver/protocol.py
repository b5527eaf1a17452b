"""ESMTPServer: the SMTP state machine for the mx, submission and submissions roles.

Written on ``twisted.internet.protocol.Protocol`` with its own input buffer rather than on
twisted.mail's ESMTP (see docs/smtp.md): three input modes (command lines, DATA,
BDAT chunks) share one buffer, and commands are handled strictly one after another: while a
reply waits on something asynchronous (a password check, the Maildir fsync, the queue) no
further input is looked at, so pipelined replies always come back in order (twisted.mail
ticket #8126). Everything byte-level is delegated to pure modules (parser, datastream).
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re
import time
from email.utils import formatdate

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from mailhub.auth import IMailUser
from mailhub.directory.addresses import lookup_key
from mailhub.netio import write_now
from mailhub.smtpserver import policy
from mailhub.smtpserver.datastream import CRLFNormalizer, DotDecoder, HeaderFixer
from mailhub.smtpserver.parser import (
    SMTPError, b64decode, b64encode, decode_plain, parse_bdat, parse_command, parse_mail_rcpt,
    reply,
)
from mailhub.smtpserver.spool import MaildirSink, SpoolSink
from mailhub.store.interfaces import StoreError

log = Logger(namespace="mailhub.smtp")

LINE, DATA, BDAT = 0, 1, 2
COMMAND_LIMIT = 512            # RFC 5321 4.5.3.1.4, including CRLF
MAIL_RCPT_LIMIT = 512 + 500    # + RFC 1870 SIZE= and RFC 4954 AUTH= parameters, SMTPUTF8
AUTH_LIMIT = 12288             # RFC 4954 section 4
MAX_HOPS = 50                  # Received: fields before a message is a loop (Postfix's hopcount_limit)
ABORT_AFTER = 5.0              # seconds from an idle-timeout 421 to a hard close
PAUSE_BUFFER = 1024 * 1024     # stop reading when this much input waits behind a reply

_qseq = itertools.count(1)


def new_queue_id() -> str:
    """A short id, unique within this host over time: seconds + microseconds + counter."""
    t = time.time()
    return f"{int(t):X}{int((t % 1) * 1e6):05X}{next(_qseq) % 0x1000:03X}"


_HELO_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\;]")


def _clean_helo(helo: str) -> str:
    """The HELO name as it may appear in a Received: header (no comments, no controls)."""
    return _HELO_UNSAFE.sub("?", helo)[:255] or "unknown"


class ESMTPServer(Protocol, TimeoutMixin):
    """One SMTP session. ``factory`` is an SMTPFactory (role, ctx, limits)."""

    factory = None

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0              # start of unprocessed input in _buf (command lines)
        self._mode = LINE
        self._busy = False
        self._paused = False
        self._processing = False
        self._discarding = False
        self._closing = False
        self._rejected = False
        self._counted = False
        self._lost = False
        self._abort_call = None
        self._sasl = None          # pending SASL continuation handler
        self.helo: str | None = None
        self.esmtp = False
        self.tls = False
        self.user: str | None = None
        self.peer_ip = "unknown"
        self.errors = 0
        self.n_messages = 0
        self.n_commands = 0
        self._reset_transaction()

    # -- connection ----------------------------------------------------------------------
    def callLater(self, period, func):
        # TimeoutMixin's timer runs on the factory's reactor (a Clock in unit tests)
        return self.factory.reactor.callLater(period, func)

    def connectionMade(self) -> None:
        f = self.factory
        peer = self.transport.getPeer()
        self.peer_ip = getattr(peer, "host", "unknown")
        self.peer_port = getattr(peer, "port", 0)
        self.tls = f.implicit_tls or ISSLTransport.providedBy(self.transport)
        self.started = time.monotonic()
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        if not f.connection_opened(self.peer_ip):
            self._rejected = True
            log.info("{listener}: refused connection from [{ip}]: too many connections from "
                     "this address", listener=f.listener, ip=self.peer_ip)
            self.transport.write(reply(421, "4.7.0", f"{f.hostname} Error: too many connections "
                                       "from your address"))
            self._close()
            return
        self._counted = True
        self.setTimeout(f.idle_timeout)
        self._send(220, None, f"{f.hostname} ESMTP mailhub")

    def _release_slot(self) -> None:
        """Give back this IP's connection slot (once). Done as soon as we decide to close:
        a client that got our 221 may reconnect before the socket is actually closed."""
        if self._counted:
            self._counted = False
            self.factory.connection_closed(self.peer_ip)

    def connectionLost(self, reason=None) -> None:
        self._lost = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self.setTimeout(None)
        self._closing = True
        self._release_slot()
        if self._rejected:
            return
        self._drop_sink()
        log.info("{listener}: disconnect from [{ip}]:{port} helo={helo} tls={tls} user={user} "
                 "messages={n} commands={c} errors={e} seconds={s:.3f}",
                 listener=self.factory.listener, ip=self.peer_ip, port=self.peer_port,
                 helo=self.helo or "-",
                 tls="yes" if self.tls else "no", user=self.user or "-", n=self.n_messages,
                 c=self.n_commands, e=self.errors, s=time.monotonic() - self.started)

    def timeoutConnection(self) -> None:
        if self._busy:  # we are the slow side (a long delivery): not the client's idleness
            self.setTimeout(self.factory.idle_timeout)  # the fired timer is gone: re-arm
            return
        log.info("{listener}: idle timeout for [{ip}]", listener=self.factory.listener,
                 ip=self.peer_ip)
        self._send(421, "4.4.2", f"{self.factory.hostname} Error: timeout exceeded")
        self._close()

    def _abort(self) -> None:
        self._abort_call = None
        if not self._lost:
            self.transport.abortConnection()

    def _close(self) -> None:
        self._closing = True
        self._buf, self._pos = b"", 0
        self._release_slot()
        self.transport.loseConnection()
        # a TLS session whose handshake never finished cannot flush our last reply, and a
        # client may simply not read it: do not wait for ever
        if self._abort_call is None and not self._lost:
            self._abort_call = self.factory.reactor.callLater(ABORT_AFTER, self._abort)

    # -- output --------------------------------------------------------------------------
    def _send(self, code: int, enhanced: str | None, text) -> None:
        if self._closing:
            return
        write_now(self.transport, reply(code, enhanced, text))

    def _error(self, code: int, enhanced: str, text: str, count: bool = True) -> None:
        self._send(code, enhanced, text)
        if count:
            self.errors += 1
            if self.errors >= self.factory.max_errors:
                log.info("{listener}: too many errors from [{ip}], disconnecting",
                         listener=self.factory.listener, ip=self.peer_ip)
                self._send(421, "4.7.0", f"{self.factory.hostname} Error: too many errors")
                self._close()

    def _raise_reply(self, e: SMTPError, count: bool = True) -> None:
        self._error(e.code, e.enhanced, e.text, count=count)

    # -- input ---------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        if self._buf:
            self._buf = (self._buf[self._pos:] if self._pos else self._buf) + data
            self._pos = 0
        else:
            self._buf = data
        if self._busy:
            if len(self._buf) > PAUSE_BUFFER and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while len(self._buf) > self._pos and not self._busy and not self._closing:
                if self._mode == LINE:
                    if not self._take_line():
                        break
                    continue
                if self._pos:  # the data modes take the buffer from its start
                    self._buf, self._pos = self._buf[self._pos:], 0
                if self._mode == DATA:
                    self._take_data()
                else:
                    self._take_bdat()
        finally:
            self._processing = False

    def _take_line(self) -> bool:
        # lines are taken by moving _pos, not by re-slicing the buffer: a 64 KB read of
        # pipelined short commands must not cost a copy of the rest per command
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > AUTH_LIMIT:
                self._discarding = True
                self._buf, self._pos = b"", 0
            return False
        line = buf[pos:nl]
        if nl + 1 >= len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._discarding:
            self._discarding = False
            self._error(500, "5.5.2", "Error: line too long")
            return True
        if self._sasl is not None:
            if len(line) + 2 > AUTH_LIMIT:
                self._sasl = None
                self._error(500, "5.5.2", "Error: line too long")
                return True
            handler, self._sasl = self._sasl, None
            handler(line.decode("ascii", "replace").strip())
            return True
        self._line(line)
        return True

    def _set_busy(self) -> None:
        self._busy = True

    def _done(self, _=None) -> None:
        """The pending reply has been sent: go on with buffered input."""
        self._busy = False
        if self._closing:
            return
        self.resetTimeout()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._process()

    # -- commands ------------------------------------------------------------------------
    def _line(self, line: bytes) -> None:
        self.n_commands += 1
        verb, arg = parse_command(line)
        limit = AUTH_LIMIT if verb == "AUTH" else MAIL_RCPT_LIMIT if verb in ("MAIL", "RCPT") \
            else COMMAND_LIMIT
        if len(line) + 2 > limit:
            self._error(500, "5.5.2", "Error: line too long")
            return
        handler = getattr(self, "do_" + verb, None) if verb.isalpha() else None
        if handler is None:
            self._error(500, "5.5.2", "Error: command not recognized")
            return
        try:
            handler(arg)
        except SMTPError as e:
            self._raise_reply(e)
        except Exception:  # e.g. the directory database is locked: temporary, say so
            log.failure("{listener}: [{ip}] error handling {verb}", listener=self.factory.listener,
                        ip=self.peer_ip, verb=verb)
            self._error(451, "4.3.0", "Error: temporary local problem, try again later")

    def do_HELO(self, arg: str) -> None:
        self._hello(arg, esmtp=False)

    def do_EHLO(self, arg: str) -> None:
        self._hello(arg, esmtp=True)

    def _hello(self, arg: str, esmtp: bool) -> None:
        if not arg.strip():
            raise SMTPError(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self._reset_transaction()
        self.helo = arg.split()[0]
        self.esmtp = esmtp
        f = self.factory
        if not esmtp:
            self._send(250, None, f.hostname)
            return
        lines = [f.hostname, "PIPELINING", f"SIZE {f.max_size}", "8BITMIME",
                 "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"]
        if not self.tls and f.tls_options is not None:
            lines.append("STARTTLS")
        if self._auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        self._send(250, None, lines)

    def _auth_offered(self) -> bool:
        f = self.factory
        if not f.auth or self.user is not None:
            return False
        return self.tls or (f.plaintext_auth_loopback and _is_loopback(self.peer_ip))

    def do_STARTTLS(self, arg: str) -> None:
        f = self.factory
        if self.tls:
            raise SMTPError(554, "5.5.1", "Error: TLS already active")
        if f.tls_options is None:
            raise SMTPError(502, "5.5.1", "Error: command not implemented")
        if arg:
            raise SMTPError(501, "5.5.4", "Syntax: STARTTLS")
        self._send(220, "2.0.0", "Ready to start TLS")
        # anything the client sent after STARTTLS in plaintext must not be executed inside
        # the TLS session (CVE-2011-0411 command injection)
        self._buf, self._pos = b"", 0
        self.transport.startTLS(f.tls_options)
        self.tls = True
        self.helo = None
        self.esmtp = False
        self.user = None
        self._reset_transaction()

    def do_AUTH(self, arg: str) -> None:
        f = self.factory
        if not f.auth:
            raise SMTPError(503, "5.5.1", "Error: authentication not enabled")
        if self.helo is None:
            raise SMTPError(503, "5.5.1", "Error: send EHLO first")
        if self.user is not None:
            raise SMTPError(503, "5.5.1", "Error: already authenticated")
        if self.mail is not None:
            raise SMTPError(503, "5.5.1", "Error: MAIL transaction in progress")
        if not self._auth_offered():
            raise SMTPError(538, "5.7.11", "Encryption required for requested authentication "
                                           "mechanism")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        initial = initial.strip()
        if mech == "PLAIN":
            if initial:
                self._auth_plain(initial)
            else:
                self._send(334, None, "")
                self._sasl = self._auth_plain
        elif mech == "LOGIN":
            if initial:
                self._auth_login_user(initial)
            else:
                self._send(334, None, b64encode(b"Username:"))
                self._sasl = self._auth_login_user
        else:
            raise SMTPError(504, "5.5.4", "Unrecognized authentication type")

    def _sasl_decode(self, text: str) -> bytes | None:
        if text == "*":
            self._error(501, "5.7.0", "Authentication aborted")
            return None
        if text == "=":
            return b""
        try:
            return b64decode(text)
        except ValueError:
            self._error(501, "5.5.2", "Cannot decode response")
            return None

    def _auth_plain(self, text: str) -> None:
        payload = self._sasl_decode(text)
        if payload is None:
            return
        try:
            authzid, authcid, password = decode_plain(payload)
        except ValueError:
            self._error(501, "5.5.2", "Cannot decode response")
            return
        if authzid and authzid.lower() != authcid.lower():
            self._auth_failed(authcid, "authorization identity differs")
            return
        self._check_login(authcid, password)

    def _auth_login_user(self, text: str) -> None:
        payload = self._sasl_decode(text)
        if payload is None:
            return
        try:
            login = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._error(501, "5.5.2", "Cannot decode response")
            return
        self._send(334, None, b64encode(b"Password:"))
        self._sasl = lambda t: self._auth_login_password(login, t)

    def _auth_login_password(self, login: str, text: str) -> None:
        payload = self._sasl_decode(text)
        if payload is None:
            return
        try:
            password = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._error(501, "5.5.2", "Cannot decode response")
            return
        self._check_login(login, password)

    def _check_login(self, login: str, password: str) -> None:
        f = self.factory
        throttle = f.ctx.throttle
        if throttle.blocked(self.peer_ip, login):
            log.info("{listener}: AUTH refused for [{ip}] login={login}: too many failures",
                     listener=f.listener, ip=self.peer_ip, login=login)
            self._set_busy()
            self._later(throttle.max_delay if hasattr(throttle, "max_delay") else 1.0,
                        lambda: self._error(454, "4.7.0", "Too many authentication failures, "
                                                          "try again later"))
            return
        self._set_busy()
        d = f.ctx.portal.login(UsernamePassword(login.encode("utf-8"), password.encode("utf-8")),
                               None, IMailUser)

        def ok(result):
            _iface, avatar, logout = result
            self.user = avatar.address
            throttle.success(self.peer_ip, login)
            try:
                logout()
            except Exception:
                pass
            log.info("{listener}: [{ip}] authenticated as {user}", listener=f.listener,
                     ip=self.peer_ip, user=self.user)
            self._send(235, "2.7.0", "Authentication successful")
            self._done()

        def bad(failure):
            if not failure.check(UnauthorizedLogin):
                log.failure("{listener}: AUTH error", failure, listener=f.listener)
            self._auth_failed(login, "invalid credentials", busy=True)

        d.addCallbacks(ok, bad)

    def _auth_failed(self, login: str, why: str, busy: bool = False) -> None:
        f = self.factory
        delay = f.ctx.throttle.failure(self.peer_ip, login)
        log.info("{listener}: AUTH failed for [{ip}] login={login}: {why}", listener=f.listener,
                 ip=self.peer_ip, login=login, why=why)
        self._set_busy()
        self._later(delay, lambda: self._error(535, "5.7.8", "Authentication credentials invalid"))

    def _later(self, delay: float, action) -> None:
        def run():
            action()
            self._done()
        if delay > 0:
            self.factory.reactor.callLater(delay, run)
        else:
            run()

    def do_MAIL(self, arg: str) -> None:
        f = self.factory
        if self.helo is None:
            raise SMTPError(503, "5.5.1", "Error: send HELO/EHLO first")
        if f.auth and self.user is None:
            raise SMTPError(530, "5.7.0", "Authentication required")
        if self.mail is not None:
            raise SMTPError(503, "5.5.1", "Error: nested MAIL command")
        path = parse_mail_rcpt(arg, "FROM")
        for key, value in path.params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    raise SMTPError(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > f.max_size:
                    raise SMTPError(552, "5.3.4", "Message size exceeds fixed limit")
            elif key == "BODY":
                if (value or "").upper() not in ("7BIT", "8BITMIME"):
                    raise SMTPError(501, "5.5.4", "Unsupported BODY parameter")
            elif key == "SMTPUTF8":
                if value is not None:
                    raise SMTPError(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":
                pass  # RFC 4954 5: accepted; we do not trust another server's claim
            else:
                raise SMTPError(555, "5.5.4", f"Unsupported option: {key}")
        if f.auth:
            if not path.address or not policy.sender_allowed(f.ctx.directory, self.user,
                                                             path.address):
                log.info("{listener}: [{ip}] sender <{sender}> refused for login {user}",
                         listener=f.listener, ip=self.peer_ip, sender=path.address,
                         user=self.user)
                raise SMTPError(553, "5.7.1", f"Sender address rejected: not owned by user "
                                              f"{self.user}")
        self.mail = path
        self.smtputf8 = "SMTPUTF8" in path.params
        self._send(250, "2.1.0", "Ok")

    def do_RCPT(self, arg: str) -> None:
        f = self.factory
        if self.mail is None:
            raise SMTPError(503, "5.5.1", "Error: need MAIL command")
        path = parse_mail_rcpt(arg, "TO")
        if path.params:
            raise SMTPError(555, "5.5.4", f"Unsupported option: {next(iter(path.params))}")
        if len(self.rcpts) >= f.max_recipients:
            self._send(452, "4.5.3", "Error: too many recipients")
            return
        local, remote = policy.recipient_targets(f.ctx.directory, path.address,
                                                 authenticated=self.user is not None)
        if remote and f.ctx.queue is None:
            log.warn("{listener}: [{ip}] RCPT <{rcpt}> deferred: no outbound queue in this "
                     "server", listener=f.listener, ip=self.peer_ip, rcpt=path.address)
            raise SMTPError(451, "4.3.0", "Cannot relay now: outbound queue unavailable")
        self.rcpts.append(path.address)
        for a in local:
            self.local[a] = None
        for a in remote:
            self.remote[a] = None
        self._send(250, "2.1.5", "Ok")

    def do_DATA(self, arg: str) -> None:
        if self.mail is None:
            raise SMTPError(503, "5.5.1", "Error: need MAIL command")
        if self.sink is not None:
            raise SMTPError(503, "5.5.1", "Error: BDAT transfer in progress")
        if not self.rcpts:
            raise SMTPError(554, "5.5.1", "Error: no valid recipients")
        if arg:
            raise SMTPError(501, "5.5.4", "Syntax: DATA")
        self._start_message()
        self._decoder = DotDecoder()
        self._mode = DATA
        self._send(354, None, "End data with <CR><LF>.<CR><LF>")

    def do_BDAT(self, arg: str) -> None:
        try:
            size, last = parse_bdat(arg)
        except ValueError:
            raise SMTPError(501, "5.5.4", "Syntax: BDAT size [LAST]") from None
        self._bdat_left = size
        self._bdat_last = last
        self._bdat_size = size
        self._bdat_error = None
        if self.mail is None:
            self._bdat_error = SMTPError(503, "5.5.1", "Error: need MAIL command")
        elif not self.rcpts:
            self._bdat_error = SMTPError(554, "5.5.1", "Error: no valid recipients")
        elif self.sink is None:
            self._start_message()
            self._decoder = CRLFNormalizer()
        self._mode = BDAT
        if size == 0:
            self._end_bdat()

    def do_RSET(self, arg: str) -> None:
        self._reset_transaction()
        self._send(250, "2.0.0", "Ok")

    def do_NOOP(self, arg: str) -> None:
        self._send(250, "2.0.0", "Ok")

    def do_QUIT(self, arg: str) -> None:
        self._send(221, "2.0.0", "Bye")
        self._close()

    def do_VRFY(self, arg: str) -> None:
        # never reveal whether a user exists (RFC 5321 3.5.3 allows 252)
        self._send(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt "
                                 "delivery")

    def do_EXPN(self, arg: str) -> None:
        raise SMTPError(502, "5.5.1", "Error: EXPN not available")

    def do_HELP(self, arg: str) -> None:
        self._send(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT "
                                 "VRFY HELP STARTTLS AUTH; see RFC 5321")

    # -- message reception ---------------------------------------------------------------
    def _reset_transaction(self) -> None:
        self._drop_sink()
        self.mail = None
        self.smtputf8 = False
        self.rcpts: list[str] = []
        self.local: dict[str, None] = {}
        self.remote: dict[str, None] = {}
        self.sink: SpoolSink | None = None
        self._decoder = None
        self._fixer = None
        self._msg_size = 0
        self._oversize = False
        self._store_error = None
        self._mode = LINE

    def _drop_sink(self) -> None:
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.discard()
            self.sink = None

    def _start_message(self) -> None:
        f = self.factory
        self.qid = new_queue_id()
        self.sink = self._direct_sink() or SpoolSink(f.spool_dir, self.qid, f.memory_limit)
        self._msg_size = 0
        self._oversize = False
        self._store_error = None
        self._write(self._received_header())
        if f.auth:
            host = f.hostname
            qid = self.qid
            self._fixer = HeaderFixer({
                "message-id": lambda: f"Message-ID: <{qid}.{os.urandom(6).hex()}@{host}>\r\n"
                .encode("ascii"),
                "date": lambda: f"Date: {formatdate(localtime=True)}\r\n".encode("ascii"),
            })
        else:
            self._fixer = HeaderFixer()  # counts Received: fields only

    def _direct_sink(self):
        """A single local recipient and nothing else: stream into its Maildir at once."""
        mda = self.factory.ctx.mda
        if len(self.local) != 1 or self.remote or not hasattr(mda, "open_copy"):
            return None
        rcpt = next(iter(self.local))
        try:
            return MaildirSink(rcpt, mda.open_copy(self.mail.address, rcpt))
        except StoreError:
            return None  # the spool path will meet (and report) the same problem at the end

    def _write(self, data: bytes) -> None:
        if self._store_error is None:
            try:
                self.sink.write(data)
            except StoreError as e:
                self._store_error = e
            except OSError as e:
                self._store_error = StoreError(f"cannot write message: {e.strerror or e}")

    def _received_header(self) -> bytes:
        f = self.factory
        ip = self.peer_ip
        literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
        proto = ("UTF8SMTP" if self.smtputf8 else "ESMTP" if self.esmtp else "SMTP")
        if proto == "SMTP" and (self.tls or self.user):
            proto = "ESMTP"
        proto += ("S" if self.tls else "") + ("A" if self.user else "")
        tls = ""
        if self.tls:
            tls = "\r\n\t(" + self._tls_description() + ")"
        rcpt = f"\r\n\tfor <{self.rcpts[0]}>" if len(self.rcpts) == 1 else ""
        text = (f"Received: from {_clean_helo(self.helo or 'unknown')} ({literal}){tls}\r\n"
                f"\tby {f.hostname} (mailhub) with {proto} id {self.qid}{rcpt};\r\n"
                f"\t{formatdate(localtime=True)}\r\n")
        return text.encode("utf-8", "surrogateescape")

    def _tls_description(self) -> str:
        try:
            conn = self.transport.getHandle()
            version = conn.get_protocol_version_name()
            cipher = conn.get_cipher_name()
            bits = conn.get_cipher_bits()
            return f"using {version} with cipher {cipher} ({bits}/{bits} bits)"
        except Exception:
            return "using TLS"

    def _accept_decoded(self, out: bytes) -> None:
        if not out:
            return
        self._msg_size += len(out)
        if self._msg_size > self.factory.max_size:
            if not self._oversize:
                self._oversize = True
                self._drop_spool_data()
            return
        if self._fixer is not None:
            out = self._fixer.feed(out)
        self._write(out)

    def _drop_spool_data(self) -> None:
        if self.sink is not None:
            self.sink.discard()

    def _take_data(self) -> None:
        out, done, left = self._decoder.feed(self._buf)
        self._buf = left
        self._accept_decoded(out)
        if done:
            self._mode = LINE
            self._end_message()

    def _take_bdat(self) -> None:
        n = min(self._bdat_left, len(self._buf))
        if n:
            chunk = self._buf[:n] if n < len(self._buf) else self._buf
            self._buf = self._buf[n:] if n < len(self._buf) else b""
            self._bdat_left -= n
            if self._bdat_error is None:
                self._accept_decoded(self._decoder.feed(chunk))
        if self._bdat_left == 0:
            self._end_bdat()

    def _end_bdat(self) -> None:
        self._mode = LINE
        if self._bdat_error is not None:
            err, self._bdat_error = self._bdat_error, None
            if self.sink is not None:
                self._reset_transaction()
            self._raise_reply(err)
            return
        if self._oversize:
            self._reset_transaction()
            self._error(552, "5.3.4", "Message size exceeds fixed limit", count=False)
            return
        if self._bdat_last:
            self._accept_decoded(self._decoder.feed(b"") + self._decoder.finish())
            self._end_message()
        else:
            self._send(250, "2.0.0", f"{self._bdat_size} octets received")

    def _end_message(self) -> None:
        f = self.factory
        if self._oversize:
            self._reset_transaction()
            self._error(552, "5.3.4", "Message size exceeds fixed limit", count=False)
            return
        if self._fixer is not None:
            self._write(self._fixer.finish())
            if self._fixer.received > MAX_HOPS:
                log.info("{listener}: {qid} refused: {n} Received: fields, a mail loop",
                         listener=f.listener, qid=self.qid, n=self._fixer.received)
                self._reset_transaction()
                self._error(554, "5.4.6", "Too many hops: mail forwarding loop", count=False)
                return
        sink, self.sink = self.sink, None
        sender = self.mail.address
        local = list(self.local)
        remote = list(self.remote)
        qid = self.qid
        size = self._msg_size
        user = self.user
        store_error = self._store_error
        self._reset_transaction()
        if store_error is not None:
            sink.discard()
            self._delivery_failed(qid, store_error)
            return
        try:
            source = sink.finish()
        except StoreError as e:
            sink.discard()
            self._delivery_failed(qid, e)
            return
        if isinstance(source, os.PathLike):
            source = str(source)
        self._set_busy()
        ds = []
        try:
            if isinstance(sink, MaildirSink):  # already written into the mailbox's tmp/
                ds.append(f.ctx.mda.commit_copies([(sink.recipient, source)]))
            if remote:
                queue = f.ctx.queue
                if queue is None:
                    raise _NoQueue()
                qpath = sink.export_copy()
                key = lookup_key(sender) if user else None
                dkim = key[1] if key else None  # the sender's domain, IDNA form
                ds.append(defer.maybeDeferred(queue.enqueue, sender, remote, str(qpath),
                                              dkim_domain=dkim))
            if local and not isinstance(sink, MaildirSink):
                ds.append(f.ctx.mda.deliver(sender, local, source))
        except Exception as e:  # noqa: BLE001 - reported as a temporary failure below
            ds.append(defer.fail(e))
        d = defer.DeferredList(ds, consumeErrors=True)

        def finished(results):
            sink.discard()
            failures = [r for ok, r in results if not ok]
            if failures:
                self._delivery_failed(qid, failures[0].value, failure=failures[0])
            else:
                self.n_messages += 1
                keys = []
                qids = []
                for _ok, r in results:
                    if isinstance(r, list):
                        keys.extend(f"{a}:{k}" for a, k in r)
                    elif r is not None:
                        qids.append(str(r))
                log.info("{listener}: accepted {qid} from=<{sender}> size={size} "
                         "nrcpt={n} local={keys} queued={qids} ip=[{ip}]{user}",
                         listener=f.listener, qid=qid, sender=sender, size=size,
                         n=len(local) + len(remote), keys=",".join(keys) or "-",
                         qids=",".join(qids) or "-", ip=self.peer_ip,
                         user=f" user={user}" if user else "")
                self._send(250, "2.0.0", f"Ok: queued as {qid}")
            self._done()

        def bug(failure):  # never leave the session waiting for ever
            log.failure("{listener}: {qid}: internal error after delivery", failure,
                        listener=f.listener, qid=qid)
            if self._busy:
                self._send(451, "4.3.0", "Error: local processing error, try again later")
                self._done()

        d.addCallback(finished)
        d.addErrback(bug)

    def _delivery_failed(self, qid: str, error, failure=None) -> None:
        f = self.factory
        if isinstance(error, StoreError):
            log.error("{listener}: {qid} not accepted, store error: {error}",
                      listener=f.listener, qid=qid, error=str(error))
            self._send(452, "4.3.1", "Insufficient system storage, try again later")
        elif isinstance(error, _NoQueue):
            log.warn("{listener}: {qid} not accepted: no outbound queue for remote recipients",
                     listener=f.listener, qid=qid)
            self._send(451, "4.3.0", "Cannot relay now: outbound queue unavailable")
        else:
            if failure is not None:
                log.failure("{listener}: {qid} not accepted", failure, listener=f.listener,
                            qid=qid)
            else:
                log.error("{listener}: {qid} not accepted: {error!r}", listener=f.listener,
                          qid=qid, error=error)
            self._send(451, "4.3.0", "Error: local processing error, try again later")


class _NoQueue(Exception):
    pass


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
