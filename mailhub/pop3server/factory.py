"""build_factory(ctx, listener_name): the POP3 protocol factory for "pop3" (plaintext with
STLS) and "pop3s" (service.py wraps it in TLS, so STLS is not offered there).

Both listeners share one MailboxLocks table (kept in ``ctx.extras``), so a mailbox open
over port 110 is also locked against port 995.
"""
from __future__ import annotations

from twisted.internet.protocol import ServerFactory

from mailhub.pop3server.maildrop import MailboxLocks
from mailhub.pop3server.protocol import POP3Server, is_loopback


class POP3Factory(ServerFactory):
    protocol = POP3Server
    noisy = False

    def __init__(self, ctx, listener_name: str):
        self.ctx = ctx
        self.listener = listener_name
        self.implicit_tls = listener_name == "pop3s"
        cfg = ctx.cfg["pop3"]
        self.idle_timeout = cfg["idle_timeout"]
        self.auth_failure_delay = cfg["auth_failure_delay"]
        self.plaintext_auth_loopback = cfg.get("plaintext_auth_loopback", True)
        self.mark_seen = cfg.get("mark_seen", True)
        self.tls_options = ctx.tls_options
        self.hostname = ctx.cfg.hostname
        self.reactor = ctx.reactor
        self.locks = ctx.extras.setdefault("pop3.locks", MailboxLocks())

    def allow_plaintext(self, host: str) -> bool:
        """May a client at ``host`` authenticate without TLS? Only from loopback (and only
        while [pop3] plaintext_auth_loopback is on). Tests replace this to check refusal."""
        return self.plaintext_auth_loopback and is_loopback(host)

    def buildProtocol(self, addr):
        return self.protocol(self)


def build_factory(ctx, listener_name: str) -> POP3Factory:
    return POP3Factory(ctx, listener_name)
