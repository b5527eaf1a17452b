"""The outbound SMTP client: one connection to one remote host, reused for many messages.

Written on LineReceiver rather than twisted.mail.smtp.ESMTPClient: ESMTPClient sends one
command at a time (no PIPELINING), knows nothing of SIZE/8BITMIME/SMTPUTF8 parameters, and
reports per-recipient results only through callbacks that assume one message per
connection; the queue needs per-recipient replies, pipelined MAIL/RCPT/DATA and several
messages per connection. ``SMTPConnection`` is the wire (Deferred per reply, pipelined
writes, idle timeout); ``ClientSession`` is the dialogue (greeting, EHLO, opportunistic
STARTTLS with the verification outcome recorded, AUTH PLAIN/LOGIN, transactions, QUIT).
"""
from __future__ import annotations

import base64
import socket
from collections import deque
from dataclasses import dataclass, field

from OpenSSL import SSL
from twisted.internet import defer, endpoints, protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from mailhub.queue.smtpwire import (
    Reply, ReplyError, ReplyParser, encode_data, max_size, parse_ehlo,
)

log = Logger(namespace="mailhub.queue")


class SessionError(Exception):
    """A session-level failure (connection, greeting, EHLO, TLS, AUTH): try the next host.

    ``permanent`` is True only for failures that no other host of the same domain can fix
    (e.g. AUTH refused by the smarthost)."""

    def __init__(self, message: str, status: str = "4.4.1", permanent: bool = False,
                 reply: Reply | None = None):
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.reply = reply


class SMTPConnection(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, reactor, timeout: float):
        self.reactor = reactor
        self.timeout = timeout
        self.parser = ReplyParser()
        self.waiting: deque[defer.Deferred] = deque([defer.Deferred()])
        self.greeting = self.waiting[0]
        self.lost = defer.Deferred()
        self.closed = False
        self._timer = None

    # -- wire ---------------------------------------------------------------------------
    def connectionMade(self):
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self._arm()

    def _arm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(self.timeout, self._timed_out) if self.waiting else None

    def _timed_out(self):
        self._timer = None
        self._fail_all(SessionError(f"timeout after {self.timeout:g}s waiting for the server",
                                    "4.4.2"))
        self.transport.abortConnection()

    def lineReceived(self, line: bytes):
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            reply = self.parser.feed(line)
        except ReplyError as e:
            self._fail_all(SessionError(f"protocol error: {e}", "4.5.0"))
            self.transport.abortConnection()
            return
        if reply is None:
            return
        if not self.waiting:
            log.warn("unexpected reply from server: {reply}", reply=str(reply))
            return
        d = self.waiting.popleft()
        self._arm()
        d.callback(reply)

    def lineLengthExceeded(self, line):
        self._fail_all(SessionError("protocol error: reply line too long", "4.5.0"))
        self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        why = reason.value if not reason.check(ConnectionDone) else "connection closed"
        self._fail_all(SessionError(f"connection lost: {why}", "4.4.2"))
        self.lost.callback(None)

    def _fail_all(self, exc: Exception):
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(exc)

    def commands(self, lines: list[bytes], payload: bytes = b"") -> list[defer.Deferred]:
        """Write commands in one segment; a Deferred per expected reply, in order."""
        if self.closed:
            return [defer.fail(SessionError("connection closed", "4.4.2")) for _ in lines]
        ds = []
        for _ in lines:
            d = defer.Deferred()
            self.waiting.append(d)
            ds.append(d)
        self.transport.write(b"".join(line + b"\r\n" for line in lines) + payload)
        self._arm()
        return ds

    def command(self, line: bytes) -> defer.Deferred:
        return self.commands([line])[0]

    def write_stream(self, chunks) -> defer.Deferred:
        """Send the encoded message body from an iterator of chunks, under the transport's
        flow control (a large message is never in memory whole)."""
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.registerProducer(_ChunkProducer(self, iter(chunks)), False)
        return d

    def write_data(self, payload: bytes) -> defer.Deferred:
        """Send the encoded message body; the Deferred fires with the final reply."""
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(payload)
        self._arm()
        return d


VERIFY_ERRORS = {
    2: "unable to get issuer certificate", 9: "certificate is not yet valid",
    10: "certificate has expired", 18: "self-signed certificate",
    19: "self-signed certificate in chain", 20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate", 24: "invalid CA certificate",
}


class _ChunkProducer:
    """A pull producer: one chunk each time the transport's buffer has drained."""

    def __init__(self, conn: SMTPConnection, chunks):
        self.conn = conn
        self.chunks = chunks

    def resumeProducing(self):
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.conn.transport.unregisterProducer()
            return
        except OSError as e:  # the queued file became unreadable: abort, nothing is sent
            self.conn.transport.unregisterProducer()
            self.conn._fail_all(SessionError(f"cannot read the queued message: {e}", "4.3.0"))
            self.conn.transport.abortConnection()
            return
        self.conn._arm()  # progress: the reply timeout starts again
        self.conn.transport.write(chunk)

    def stopProducing(self):
        close = getattr(self.chunks, "close", None)
        if close:
            close()


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """A pyOpenSSL client connection creator that accepts any certificate but records
    whether it verified (chain against the system CAs + ``ca_file``, and the host name)."""

    def __init__(self, hostname: str, ca_file: str | None = None):
        self.hostname = hostname
        self.ca_file = ca_file
        self.errors: list[str] = []

    def _verify(self, conn, cert, errno, depth, ok):
        if not ok:
            self.errors.append(f"depth {depth}: {VERIFY_ERRORS.get(errno, f'error {errno}')}")
        return True

    def clientConnectionForTLS(self, tlsProtocol):
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        ctx.set_default_verify_paths()
        if self.ca_file:
            ctx.load_verify_locations(self.ca_file)
        conn = SSL.Connection(ctx, None)
        conn.set_app_data(tlsProtocol)
        try:
            conn.set_tlsext_host_name(self.hostname.encode("idna"))
        except (UnicodeError, ValueError):
            pass
        conn.set_connect_state()
        return conn

    def verification(self, transport) -> tuple[bool, str]:
        """(verified, reason) once the handshake is done."""
        if self.errors:
            return False, self.errors[0]
        try:
            cert = transport.getPeerCertificate()
        except Exception:  # noqa: BLE001
            cert = None
        if cert is None:
            return False, "no certificate"
        try:
            from service_identity import VerificationError
            from service_identity.cryptography import verify_certificate_hostname

            verify_certificate_hostname(cert.to_cryptography(), self.hostname)
        except VerificationError as e:
            return False, f"name mismatch: {e}"
        except Exception as e:  # noqa: BLE001
            return False, f"name check failed: {e}"
        return True, "verified"


class _OneShot(protocol.Factory):
    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


@dataclass
class TransactionResult:
    """Per-recipient replies of one message; ``data`` is the end-of-data reply (or None)."""
    mail: Reply | None = None
    rcpt: list[Reply] = field(default_factory=list)
    data: Reply | None = None


@dataclass
class SessionOptions:
    helo: str
    timeout: float = 60.0
    connect_timeout: float = 30.0
    starttls: bool = True             # opportunistic STARTTLS when offered
    require_tls: bool = False         # refuse plaintext and unverified certificates
    implicit_tls: bool = False        # TLS from the first byte (smarthost port 465)
    username: str | None = None       # AUTH (only over TLS)
    password: str | None = None
    ca_file: str | None = None


class ClientSession:
    """The dialogue with one host: ``yield open()``, then ``send()`` messages, ``close()``."""

    def __init__(self, reactor, host: str, ip: str, port: int, opts: SessionOptions):
        self.reactor = reactor
        self.host = host          # the name we expect in the certificate
        self.ip = ip
        self.port = port
        self.opts = opts
        self.conn: SMTPConnection | None = None
        self.ext: dict[str, str] = {}
        self.tls = False
        self.tls_verified = False
        self.messages = 0

    @property
    def label(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

    @property
    def alive(self) -> bool:
        return self.conn is not None and not self.conn.closed

    @defer.inlineCallbacks
    def open(self):
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        Endpoint = endpoints.TCP6ClientEndpoint if family == socket.AF_INET6 else endpoints.TCP4ClientEndpoint
        ep = Endpoint(self.reactor, self.ip, self.port, timeout=self.opts.connect_timeout)
        tls_creator = None
        if self.opts.implicit_tls:
            tls_creator = OpportunisticTLS(self.host, self.opts.ca_file)
            ep = endpoints.wrapClientTLS(tls_creator, ep)
        conn = SMTPConnection(self.reactor, self.opts.timeout)
        try:
            yield ep.connect(_OneShot(conn))
        except Exception as e:  # noqa: BLE001
            raise SessionError(f"cannot connect to {self.label}: {e}", "4.4.1")
        self.conn = conn
        greeting = yield conn.greeting
        if greeting.code != 220:
            self.abort()
            raise SessionError(f"{self.label} greeted with: {greeting}", greeting.status(),
                               reply=greeting)
        if tls_creator is not None:
            self.tls = True
        yield self._ehlo()
        if tls_creator is not None:
            yield self._check_tls(tls_creator)
        elif "STARTTLS" in self.ext and self.opts.starttls:
            reply = yield conn.command(b"STARTTLS")
            if reply.code == 220:
                creator = OpportunisticTLS(self.host, self.opts.ca_file)
                conn.transport.startTLS(creator)
                self.tls = True
                yield self._ehlo()
                yield self._check_tls(creator)
            elif self.opts.require_tls:
                yield self.close()
                raise SessionError(f"{self.label} refused STARTTLS: {reply}", "4.7.4", reply=reply)
        if self.opts.require_tls and not self.tls:
            yield self.close()
            raise SessionError(f"{self.label} does not offer STARTTLS and TLS is required",
                               "4.7.4")
        if self.opts.username:
            yield self._auth()
        log.info("connected to {label}{tls}", label=self.label,
                 tls=(" (TLS, " + ("verified" if self.tls_verified else "unverified") + ")")
                 if self.tls else " (no TLS)")
        return self

    @defer.inlineCallbacks
    def _ehlo(self):
        reply = yield self.conn.command(b"EHLO " + self.opts.helo.encode("ascii", "replace"))
        if reply.code == 250:
            self.ext = parse_ehlo(reply)
            return
        if reply.code >= 500:
            reply2 = yield self.conn.command(b"HELO " + self.opts.helo.encode("ascii", "replace"))
            if reply2.code == 250:
                self.ext = {}
                return
            reply = reply2
        self.abort()
        raise SessionError(f"{self.label} refused EHLO/HELO: {reply}", reply.status(), reply=reply)

    @defer.inlineCallbacks
    def _check_tls(self, creator: OpportunisticTLS):
        # the EHLO after the handshake has completed, so the peer certificate is known
        ok, why = creator.verification(self.conn.transport)
        self.tls_verified = ok
        if not ok:
            log.info("TLS to {label}: certificate not verified ({why})", label=self.label, why=why)
            if self.opts.require_tls:
                yield self.close()
                raise SessionError(f"TLS certificate of {self.label} not verified: {why}",
                                   "4.7.5")
        else:
            log.debug("TLS to {label}: certificate verified", label=self.label)

    @defer.inlineCallbacks
    def _auth(self):
        if not self.tls:
            yield self.close()
            raise SessionError(f"will not send the password to {self.label} without TLS "
                               "(the server offers no STARTTLS)", "4.7.0")
        mechs = self.ext.get("AUTH", "").upper().split()
        user = self.opts.username.encode("utf-8")
        pw = (self.opts.password or "").encode("utf-8")
        if "PLAIN" in mechs or not mechs:
            token = base64.b64encode(b"\0" + user + b"\0" + pw)
            reply = yield self.conn.command(b"AUTH PLAIN " + token)
        elif "LOGIN" in mechs:
            reply = yield self.conn.command(b"AUTH LOGIN")
            if reply.code == 334:
                reply = yield self.conn.command(base64.b64encode(user))
            if reply.code == 334:
                reply = yield self.conn.command(base64.b64encode(pw))
        else:
            yield self.close()
            raise SessionError(f"{self.label} offers no AUTH mechanism we support "
                               f"({' '.join(mechs)})", "4.7.0")
        if reply.code != 235:
            yield self.close()
            raise SessionError(f"authentication to {self.label} as {self.opts.username} failed: "
                               f"{reply}", "4.7.0", reply=reply)

    def limit(self) -> int | None:
        return max_size(self.ext)

    @defer.inlineCallbacks
    def send(self, sender: str, recipients: list[str], data: bytes, *, eight_bit: bool,
             smtputf8: bool):
        """One transaction. Fires with a TransactionResult; SessionError if the connection
        fails before the end-of-data reply."""
        conn = self.conn
        params = []
        if "SIZE" in self.ext:
            params.append(f"SIZE={len(data) if isinstance(data, bytes) else data.size}")
        if eight_bit and "8BITMIME" in self.ext:
            params.append("BODY=8BITMIME")
        if smtputf8 and "SMTPUTF8" in self.ext:
            params.append("SMTPUTF8")
        mail = f"MAIL FROM:<{sender}>" + "".join(" " + p for p in params)
        cmds = [mail.encode("utf-8")] + [f"RCPT TO:<{r}>".encode("utf-8") for r in recipients]
        res = TransactionResult()
        self.messages += 1
        if "PIPELINING" in self.ext:
            ds = conn.commands(cmds + [b"DATA"])
            replies = yield defer.gatherResults(ds, consumeErrors=True).addErrback(
                lambda f: f.value.subFailure if hasattr(f.value, "subFailure") else f)
            res.mail, res.rcpt, data_reply = replies[0], replies[1:-1], replies[-1]
        else:
            res.mail = yield conn.command(cmds[0])
            if res.mail.code != 250:
                res.rcpt = [res.mail] * len(recipients)
                return res
            for c in cmds[1:]:
                r = yield conn.command(c)
                res.rcpt.append(r)
            data_reply = None
            if any(r.positive for r in res.rcpt):
                data_reply = yield conn.command(b"DATA")
        if res.mail.code != 250:
            res.rcpt = [res.mail] * len(recipients)
        accepted = res.mail.code == 250 and any(r.positive for r in res.rcpt)
        if data_reply is None:
            yield self._rset()
            return res
        if data_reply.code != 354:
            if accepted:  # DATA refused: that answer is the answer for the accepted ones
                res.data = data_reply
            yield self._rset()
            return res
        if not accepted:  # a server that said 354 with no recipients: end it empty
            yield conn.write_data(b".\r\n")
            yield self._rset()
            return res
        if isinstance(data, bytes):
            res.data = yield conn.write_data(encode_data(data))
        else:
            res.data = yield conn.write_stream(data.encoded_chunks())
        return res

    @defer.inlineCallbacks
    def _rset(self):
        try:
            reply = yield self.conn.command(b"RSET")
        except SessionError:
            return
        if reply.code != 250:
            self.abort()

    @defer.inlineCallbacks
    def close(self):
        if not self.alive:
            return
        try:
            d = self.conn.command(b"QUIT")
            yield defer.DeferredList([d, self.conn.lost], fireOnOneCallback=True,
                                     consumeErrors=True)
        except Exception:  # noqa: BLE001
            pass
        if self.alive:
            self.conn.transport.loseConnection()

    def abort(self):
        if self.alive:
            self.conn.transport.abortConnection()
