"""POP3Server: one POP3 session (RFC 1939 + RFC 2449 CAPA/RESP-CODES + RFC 2595 STLS +
RFC 5034 AUTH PLAIN), written on ``Protocol`` rather than twisted.mail.pop3.POP3.

States: AUTHORIZATION (CAPA, STLS, USER/PASS, AUTH PLAIN, QUIT) and TRANSACTION (STAT, LIST,
UIDL, RETR, TOP, DELE, RSET, NOOP, CAPA, QUIT); QUIT in TRANSACTION is the UPDATE state.
Commands are handled one at a time in order: while a login is being checked, a failure is
being delayed, a large message is streaming or the client is not reading its replies (the
session is the transport's push producer), later (pipelined) lines wait in the buffer.
"""
from __future__ import annotations

import io
import ipaddress
import os
import socket
from functools import partial

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mailhub.auth import IMailUser
from mailhub.netio import write_now
from mailhub.pop3server.maildrop import Maildrop
from mailhub.pop3server.sender import MessageSender
from mailhub.pop3server.wire import (
    TOO_LONG, LineSplitter, decode_sasl_plain, parse_command, rest_after_verb, stuff_message,
    top_chunks,
)

log = Logger(namespace="mailhub.pop3")

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"

MAX_LINE = 255              # RFC 2449 section 4
MAX_SASL_LINE = 8192
SMALL_MESSAGE = 256 * 1024   # read whole and sent in one write; larger ones are streamed
CHUNK = 64 * 1024
MAX_PENDING_INPUT = 64 * 1024  # stop reading while this much pipelined input waits

ERR_PLAINTEXT = (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections;"
                 b" use STLS first\r\n")


def set_nodelay(transport) -> None:
    """TCP_NODELAY on the socket under ``transport`` (plain TCP or TLS-wrapped)."""
    t = transport
    for _ in range(4):
        if t is None:
            return
        handle = getattr(t, "socket", None)
        if isinstance(handle, socket.socket):
            try:
                handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            return
        t = getattr(t, "transport", None)
    try:
        transport.setTcpNoDelay(True)
    except Exception:
        pass


def is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@implementer(IPushProducer)
class POP3Server(Protocol, TimeoutMixin):
    def __init__(self, factory):
        self.factory = factory
        self.ctx = factory.ctx
        self.callLater = factory.reactor.callLater  # TimeoutMixin's clock
        self.secure = factory.implicit_tls
        self.state = AUTHORIZATION
        self.lines = LineSplitter(MAX_LINE)
        self.busy = False        # a command is still in progress: do not read the next one
        self.closing = False
        self.user: bytes | None = None
        self.sasl_pending = False
        self.address: str | None = None
        self.drop: Maildrop | None = None
        self._logout = None
        self._delayed = None
        self._sender: MessageSender | None = None
        self._read_paused = False
        self._out_paused = False     # the transport's write buffer is full
        self._continue_call = None
        self._direct = False
        self.peer = "?"

    # -- connection --------------------------------------------------------------------------
    def connectionMade(self):
        set_nodelay(self.transport)
        # plain TCP: replies are flushed at the end of _drain instead of on the next reactor
        # round (one epoll wait fewer per command; see _flush)
        self._direct = isinstance(self.transport, tcp.Server) and not self.secure
        self.peer = getattr(self.transport.getPeer(), "host", "?")
        # the session is the transport's producer: a client that does not read its replies
        # pauses us (no more commands read, no more message chunks written)
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout or None)
        self._write(b"+OK %s POP3 server ready\r\n" % self.factory.hostname.encode())
        # logged after the greeting is sent: the client does not wait for the log write
        log.info("pop3 connect from {peer} on {listener}", peer=self.peer,
                 listener=self.factory.listener)

    def connectionLost(self, reason=None):
        self.closing = True
        self.setTimeout(None)
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._continue_call is not None and self._continue_call.active():
            self._continue_call.cancel()
        self._continue_call = None
        if self._sender is not None:
            self._sender.close(completed=False)
        pending = 0
        if self.drop is not None and self.state == TRANSACTION:
            pending = sum(self.drop.deleted)
        self._release()
        log.info("pop3 disconnect {peer} {address}{note}", peer=self.peer,
                 address=self.address or "(not logged in)",
                 note=f" without QUIT: {pending} deletions discarded" if pending else "")

    def _release(self) -> None:
        if self.address is not None:
            self.factory.locks.release(self.address, self)
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def timeoutConnection(self):
        log.info("pop3 idle timeout {peer} {address}", peer=self.peer,
                 address=self.address or "(not logged in)")
        self.closing = True
        if self._sender is not None or self._out_paused:
            # the client stopped reading for the whole timeout: a polite close would wait
            # for it forever
            self.transport.abortConnection()
            return
        self._write(b"-ERR Disconnected for inactivity\r\n")
        self._close()

    def _close(self) -> None:
        """Close after the pending replies (a transport waits for its producer to be
        unregistered before closing, the TLS one even when the producer is not paused)."""
        self.closing = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- IPushProducer (for the transport) ----------------------------------------------------
    def pauseProducing(self):
        self._out_paused = True
        self._update_reading()

    def resumeProducing(self):
        self._out_paused = False
        self._update_reading()
        # not from inside the transport's doWrite: continue on the next reactor turn
        if self._continue_call is None and not self.closing:
            self._continue_call = self.factory.reactor.callLater(0, self._continue)

    def stopProducing(self):
        self.closing = True
        if self._sender is not None:
            self._sender.close(completed=False)

    def _paused(self) -> bool:
        return self._out_paused or self.closing

    def _continue(self) -> None:
        self._continue_call = None
        if self._paused():
            return
        if self._sender is not None:
            self.resetTimeout()  # the client is reading: a long transfer is not idleness
            self._sender.pump(self._paused)
        self._drain()

    def _update_reading(self) -> None:
        """Stop reading from the socket while more than MAX_PENDING_INPUT octets of
        commands wait unprocessed (behind a long operation, or because the client does not
        read its replies). Only then: pausing the socket under a TLS wrapper also stops the
        TLS layer (a handshake pauses the session's output until it completes)."""
        if self.closing:
            return
        want = (self.busy or self._out_paused) and len(self.lines) > MAX_PENDING_INPUT
        if want != self._read_paused:
            self._read_paused = want
            if want:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    # -- input -------------------------------------------------------------------------------
    def dataReceived(self, data):
        if self.closing:
            return
        self.resetTimeout()
        self.lines.feed(data)
        self._drain()

    def _drain(self) -> None:
        lines = self.lines
        while not self.busy and not self._out_paused and not self.closing:
            line = lines.next()
            if line is None:
                break
            if line is TOO_LONG:
                self._write(b"-ERR Line too long (the limit is 255 octets)\r\n")
                self.sasl_pending = False
                lines.limit = MAX_LINE
                continue
            if self.sasl_pending:
                self.sasl_pending = False
                lines.limit = MAX_LINE
                self._sasl_response(line)
                continue
            verb, args = parse_command(line)
            handler = _COMMANDS.get(verb)
            if handler is None:
                self._write(b"-ERR Unknown command\r\n" if verb else
                                     b"-ERR Empty command\r\n")
                continue
            states, method = handler
            if self.state not in states:
                self._write(b"-ERR Command not valid in this state\r\n")
                continue
            method(self, args, line)
        if self._direct:
            self._flush()
        self._update_reading()

    def _write(self, data: bytes) -> None:
        """A reply: on plain TCP sent at once when nothing is queued (``write_now``: no
        epoll_ctl pair and no reactor turn per reply), else buffered by the transport."""
        if self._direct:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

    def _flush(self) -> None:
        """Send what the replies just wrote now, from this reactor callback, rather than
        when the reactor next polls for writability: a request/response client (poplib,
        fetchmail) waits on every reply, so that extra round costs throughput. Only on a
        plain TCP transport with no close in progress."""
        t = self.transport
        if not t.disconnecting and t.connected and getattr(t, "_tempDataLen", 0):
            t.doWrite()

    def _resume(self) -> None:
        """The command in progress is finished: read the next one."""
        self.busy = False
        if not self.closing:
            self._drain()

    def _reply_later(self, delay: float, data: bytes) -> None:
        def fire():
            self._delayed = None
            if not self.closing:
                self._write(data)
                self._resume()
        if delay <= 0:
            fire()
        else:
            self._delayed = self.factory.reactor.callLater(delay, fire)

    # -- AUTHORIZATION -----------------------------------------------------------------------
    def plaintext_ok(self) -> bool:
        return self.secure or self.factory.allow_plaintext(self.peer)

    def capabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state == AUTHORIZATION:
            if self.plaintext_ok():
                caps += [b"USER", b"SASL PLAIN"]
            if not self.secure and self.factory.tls_options is not None:
                caps.append(b"STLS")
        caps += [b"EXPIRE NEVER", b"IMPLEMENTATION mailhub"]
        return caps

    def do_CAPA(self, args, line):
        self._write(b"+OK Capability list follows\r\n" +
                             b"".join(c + b"\r\n" for c in self.capabilities()) + b".\r\n")

    def do_STLS(self, args, line):
        if self.secure:
            self._write(b"-ERR Command not permitted when TLS active\r\n")
            return
        if self.factory.tls_options is None:
            self._write(b"-ERR TLS not available\r\n")
            return
        self._write(b"+OK Begin TLS negotiation now\r\n")
        # anything the client pipelined after STLS arrived in plaintext: never act on it
        self.lines.clear()
        self.user = None
        self.transport.startTLS(self.factory.tls_options)
        self.secure = True
        self._direct = False
        log.info("pop3 STLS {peer}", peer=self.peer)

    def do_USER(self, args, line):
        if not self.plaintext_ok():
            self._write(ERR_PLAINTEXT)
            return
        name = rest_after_verb(line).strip()
        if not name:
            self._write(b"-ERR USER needs a name\r\n")
            return
        self.user = name
        self._write(b"+OK\r\n")

    def do_PASS(self, args, line):
        if not self.plaintext_ok():
            self._write(ERR_PLAINTEXT)
            return
        if self.user is None:
            self._write(b"-ERR USER first\r\n")
            return
        user, self.user = self.user, None
        password = rest_after_verb(line)
        self._login(user.decode("utf-8", "replace"), password, None)

    def do_AUTH(self, args, line):
        if not args:
            self._write(b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n")
            return
        if args[0].upper() != b"PLAIN":
            self._write(b"-ERR Unsupported authentication mechanism\r\n")
            return
        if not self.plaintext_ok():
            self._write(ERR_PLAINTEXT)
            return
        if len(args) > 2:
            self._write(b"-ERR Syntax error\r\n")
            return
        if len(args) == 2:
            self._sasl_response(b"" if args[1] == b"=" else args[1])
        else:
            self.sasl_pending = True
            # RFC 5034: the 255-octet command limit does not bind SASL responses
            self.lines.limit = MAX_SASL_LINE
            self._write(b"+ \r\n")

    def _sasl_response(self, line: bytes) -> None:
        if line.strip() == b"*":
            self._write(b"-ERR Authentication cancelled\r\n")
            return
        plain = decode_sasl_plain(line)
        if plain is None:
            self._write(b"-ERR [AUTH] Malformed AUTH PLAIN response\r\n")
            return
        authz, authc, password = plain
        self._login(authc, password.encode("utf-8"), authz or None)

    def _login(self, login: str, password: bytes, authz: str | None) -> None:
        throttle = self.ctx.throttle
        self.busy = True
        if throttle.blocked(self.peer, login):
            log.info("pop3 login refused (throttled) for {login} from {peer}", login=login,
                     peer=self.peer)
            self._reply_later(self.factory.auth_failure_delay,
                              b"-ERR [SYS/TEMP] Too many failed logins; try again later\r\n")
            return
        d = self.ctx.portal.login(UsernamePassword(login.encode("utf-8"), password), None,
                                  IMailUser)
        d.addCallbacks(self._login_ok, self._login_failed, callbackArgs=(login, authz),
                       errbackArgs=(login,))
        d.addErrback(self._unexpected)

    def _login_ok(self, result, login: str, authz: str | None) -> None:
        _iface, user, logout = result
        if self.closing:
            logout()
            return
        address = user.address
        if authz is not None and authz.strip().lower() not in (address.lower(), login.lower()):
            logout()
            self._failed(login, "authorization identity not permitted")
            return
        self.ctx.throttle.success(self.peer, login)
        if not self.factory.locks.acquire(address, self):
            logout()
            log.info("pop3 login {address} from {peer} refused: mailbox in use",
                     address=address, peer=self.peer)
            self._write(b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n")
            self._resume()
            return
        self.address = address
        self._logout = logout
        try:
            self.drop = Maildrop(self.ctx.store, address)
        except OSError as e:
            log.error("pop3 cannot read the maildrop of {address}: {err}", address=address,
                      err=str(e))
            self._release()
            self.address = None
            self._write(b"-ERR [SYS/TEMP] Cannot open the mailbox\r\n")
            self._resume()
            return
        self.state = TRANSACTION
        n, octets = self.drop.stat()
        log.info("pop3 login {address} from {peer}: {n} messages, {octets} octets",
                 address=address, peer=self.peer, n=n, octets=octets)
        self._write(b"+OK Logged in, %d messages (%d octets)\r\n" % (n, octets))
        self._resume()

    def _login_failed(self, failure, login: str) -> None:
        if self.closing:
            return
        if failure.check(UnauthorizedLogin, UnhandledCredentials):
            self._failed(login, "invalid credentials")
            return
        log.failure("pop3 authentication error for {login}", failure, login=login)
        self._write(b"-ERR [SYS/TEMP] Temporary authentication failure\r\n")
        self._resume()

    def _failed(self, login: str, why: str) -> None:
        throttle = self.ctx.throttle
        delay = throttle.failure(self.peer, login)
        base = self.factory.auth_failure_delay
        delay = delay * base / throttle.base_delay if throttle.base_delay > 0 else base
        log.info("pop3 login failed for {login} from {peer}: {why}", login=login,
                 peer=self.peer, why=why)
        self._reply_later(delay, b"-ERR [AUTH] Authentication failed\r\n")

    def _unexpected(self, failure) -> None:
        log.failure("pop3 unexpected error", failure)
        if not self.closing:
            self._write(b"-ERR [SYS/TEMP] Internal error\r\n")
            self._resume()

    def do_QUIT(self, args, line):
        self.busy = True
        if self.state == TRANSACTION and self.drop is not None:
            removed, gone, errors = self.drop.commit(self.factory.mark_seen)
            self._release()
            log.info("pop3 logout {address}: {removed} deleted{gone}", address=self.address,
                     removed=removed, gone=f", {gone} already gone" if gone else "")
            self.state = AUTHORIZATION  # nothing left to discard in connectionLost
            if errors:
                log.error("pop3 could not remove messages of {address}: {errors}",
                          address=self.address, errors="; ".join(errors))
                self._write(b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
            else:
                self._write(b"+OK Logging out, %d messages deleted\r\n" % (removed + gone))
        else:
            self._write(b"+OK Logging out\r\n")
        self._close()

    # -- TRANSACTION -------------------------------------------------------------------------
    def _msg(self, arg: bytes) -> int | None:
        """0-based index of a message-number argument, or None after answering -ERR."""
        if not arg.isdigit() or len(arg) > 9:
            self._write(b"-ERR Invalid message number\r\n")
            return None
        n = int(arg)
        if n < 1 or n > len(self.drop):
            self._write(b"-ERR No such message\r\n")
            return None
        if self.drop.deleted[n - 1]:
            self._write(b"-ERR Message %d already deleted\r\n" % n)
            return None
        return n - 1

    def _argc(self, args, low: int, high: int) -> bool:
        if low <= len(args) <= high:
            return True
        self._write(b"-ERR Wrong number of arguments\r\n")
        return False

    def do_STAT(self, args, line):
        n, octets = self.drop.stat()
        self._write(b"+OK %d %d\r\n" % (n, octets))

    def do_LIST(self, args, line):
        if not self._argc(args, 0, 1):
            return
        drop = self.drop
        if args:
            i = self._msg(args[0])
            if i is not None:
                self._write(b"+OK %d %d\r\n" % (i + 1, drop.sizes[i]))
            return
        n, octets = drop.stat()
        deleted = drop.deleted
        body = b"".join([b"%d %d\r\n" % (i + 1, size) for i, size in enumerate(drop.sizes)
                         if not deleted[i]])
        self._write(b"+OK %d messages (%d octets)\r\n%s.\r\n" % (n, octets, body))

    def do_UIDL(self, args, line):
        if not self._argc(args, 0, 1):
            return
        drop = self.drop
        uidls = drop.uidls
        if args:
            i = self._msg(args[0])
            if i is not None:
                self._write(b"+OK %d %s\r\n" % (i + 1, uidls[i].encode()))
            return
        deleted = drop.deleted
        body = "".join([f"{i + 1} {u}\r\n" for i, u in enumerate(uidls) if not deleted[i]])
        self._write(b"+OK\r\n" + body.encode() + b".\r\n")

    def do_RETR(self, args, line):
        if not self._argc(args, 1, 1):
            return
        i = self._msg(args[0])
        if i is not None:
            self._send_message(i, None)

    def do_TOP(self, args, line):
        if not self._argc(args, 2, 2):
            return
        i = self._msg(args[0])
        if i is None:
            return
        if not args[1].isdigit() or len(args[1]) > 20:
            self._write(b"-ERR Invalid line count\r\n")
            return
        self._send_message(i, int(args[1]))

    def _send_message(self, i: int, top: int | None) -> None:
        drop = self.drop
        try:
            fd = drop.open_fd(i)
            if fd is None:
                self._write(b"-ERR Message %d no longer exists (removed by another "
                                     b"session)\r\n" % (i + 1))
                return
            try:
                # read the size the listing gave (+1 to see a file that grew): a read of
                # SMALL_MESSAGE bytes costs a 256 KiB allocation per RETR
                want = min(drop.sizes[i], SMALL_MESSAGE) + 1
                data = os.read(fd, want)
                if len(data) == want and want <= SMALL_MESSAGE:  # more than listed: read on
                    data += os.read(fd, SMALL_MESSAGE + 1 - want)
                if len(data) <= SMALL_MESSAGE:  # the whole file: send it in one write
                    if top is None:
                        drop.retrieved[i] = 1
                        self._write(b"+OK %d octets\r\n" % len(data) +
                                             stuff_message(data))
                    else:
                        data = b"".join(top_chunks(io.BytesIO(data), top))
                        self._write(b"+OK Top of message follows\r\n" +
                                             stuff_message(data))
                    return
                size = os.fstat(fd).st_size
                os.lseek(fd, 0, os.SEEK_SET)
                f = os.fdopen(fd, "rb")
                fd = None
            finally:
                if fd is not None:
                    os.close(fd)
        except OSError as e:
            log.error("pop3 cannot read message {key} of {address}: {err}",
                      key=drop.infos[i].key, address=self.address, err=str(e))
            self._write(b"-ERR [SYS/TEMP] Cannot read message %d\r\n" % (i + 1))
            return
        if top is None:
            self._write(b"+OK %d octets\r\n" % size)
            chunks = iter(partial(f.read, CHUNK), b"")
        else:
            self._write(b"+OK Top of message follows\r\n")
            chunks = top_chunks(f, top, CHUNK)
        self.busy = True

        def done(completed: bool) -> None:
            self._sender = None
            if self.closing:
                return
            if not completed:  # a read error: the response cannot be finished truthfully
                self.closing = True
                self.transport.abortConnection()
                return
            if top is None:
                drop.retrieved[i] = 1
            self.busy = False  # whoever pumped (_drain or _continue) reads on

        self._sender = MessageSender(self.transport.write, f, chunks, done)
        self._sender.pump(self._paused)

    def do_DELE(self, args, line):
        if not self._argc(args, 1, 1):
            return
        i = self._msg(args[0])
        if i is not None:
            self.drop.deleted[i] = 1
            self._write(b"+OK Message %d deleted\r\n" % (i + 1))

    def do_RSET(self, args, line):
        drop = self.drop
        drop.deleted[:] = bytes(len(drop))
        n, octets = drop.stat()
        self._write(b"+OK %d messages (%d octets)\r\n" % (n, octets))

    def do_NOOP(self, args, line):
        self._write(b"+OK\r\n")


_BOTH = (AUTHORIZATION, TRANSACTION)
_AUTH = (AUTHORIZATION,)
_TRANS = (TRANSACTION,)
_COMMANDS = {
    "CAPA": (_BOTH, POP3Server.do_CAPA),
    "QUIT": (_BOTH, POP3Server.do_QUIT),
    "STLS": (_AUTH, POP3Server.do_STLS),
    "USER": (_AUTH, POP3Server.do_USER),
    "PASS": (_AUTH, POP3Server.do_PASS),
    "AUTH": (_AUTH, POP3Server.do_AUTH),
    "STAT": (_TRANS, POP3Server.do_STAT),
    "LIST": (_TRANS, POP3Server.do_LIST),
    "UIDL": (_TRANS, POP3Server.do_UIDL),
    "RETR": (_TRANS, POP3Server.do_RETR),
    "TOP": (_TRANS, POP3Server.do_TOP),
    "DELE": (_TRANS, POP3Server.do_DELE),
    "RSET": (_TRANS, POP3Server.do_RSET),
    "NOOP": (_TRANS, POP3Server.do_NOOP),
}
