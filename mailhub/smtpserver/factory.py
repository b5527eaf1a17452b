"""build_factory(ctx, listener_name): the SMTP factory for the mx, submission, submissions roles.

The role decides the policy: "mx" offers STARTTLS and no AUTH and only accepts mail for our
own addresses; "submission" requires AUTH (offered after STARTTLS, or in plaintext from
loopback when ``[smtp] plaintext_auth_loopback`` is true, as Postfix and Dovecot allow);
"submissions" is submission on a connection service.py has already wrapped in TLS. The
factory also keeps the per-client-IP connection count for ``max_connections_per_ip``.
"""
from __future__ import annotations

from collections import Counter

from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from mailhub.smtpserver.protocol import ESMTPServer
from mailhub.smtpserver.spool import DEFAULT_MEMORY_LIMIT, clean_spool_dir

log = Logger(namespace="mailhub.smtp")

ROLES = ("mx", "submission", "submissions")


class SMTPFactory(ServerFactory):
    protocol = ESMTPServer
    noisy = False

    def __init__(self, ctx, listener: str):
        if listener not in ROLES:
            raise ValueError(f"not an SMTP listener: {listener!r}")
        cfg = ctx.cfg
        smtp = cfg["smtp"]
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.listener = listener
        self.hostname = cfg.hostname
        self.implicit_tls = listener == "submissions"
        self.auth = listener != "mx"
        self.tls_options = ctx.tls_options
        self.max_size = smtp["max_message_size"]
        self.max_recipients = smtp["max_recipients"]
        self.max_errors = max(1, smtp["max_errors"])
        self.idle_timeout = smtp["idle_timeout"] or None
        self.max_per_ip = smtp["max_connections_per_ip"]
        self.plaintext_auth_loopback = smtp["plaintext_auth_loopback"]
        self.memory_limit = DEFAULT_MEMORY_LIMIT
        self.spool_dir = cfg.data_dir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.per_ip: Counter[str] = Counter()

    def connection_opened(self, ip: str) -> bool:
        """Count a new connection; False when the IP is over its limit (then not counted)."""
        if self.max_per_ip and self.per_ip[ip] >= self.max_per_ip:
            return False
        self.per_ip[ip] += 1
        return True

    def connection_closed(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def build_factory(ctx, listener_name: str) -> SMTPFactory:
    spool = ctx.cfg.data_dir / "spool"
    if not ctx.extras.get("smtp.spool_cleaned"):
        spool.mkdir(parents=True, exist_ok=True)
        n = clean_spool_dir(spool)
        if n:
            log.info("removed {n} stale spool file(s) left by an earlier run", n=n)
        ctx.extras["smtp.spool_cleaned"] = True
    return SMTPFactory(ctx, listener_name)
