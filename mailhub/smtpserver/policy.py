"""Who may send to whom: the relay policy of the MX role and the sender check of submission.

MX (unauthenticated): a recipient is accepted only when its domain is one we serve and the
address resolves in the directory (user, alias, catch-all, ``user+tag@``); the directory's
``lookup_key`` refuses any local part that still carries routing characters (``%``, ``!``,
``@`` inside quotes, ``/``), so the classic relay tricks resolve to nothing. A domain we do
not serve (IP literals included) is "relay access denied". Aliases that forward outside give
"remote" targets, which go to the outbound queue like submitted mail.

Submission (authenticated): recipients in our domains must resolve as above; any other
domain is remote. MAIL FROM must be one of ``directory.senders_for(user)`` (own address and
aliases that resolve to the user), or a ``+tag`` subaddress of one of them.
"""
from __future__ import annotations

from mailhub.directory.addresses import lookup_key
from mailhub.smtpserver.parser import SMTPError

RELAY_DENIED = SMTPError(554, "5.7.1", "Relay access denied")
USER_UNKNOWN = SMTPError(550, "5.1.1", "Recipient address rejected: User unknown")


def _domain_served(directory, domain: str) -> bool:
    if not domain or domain.startswith("["):
        return False
    try:
        return bool(directory.has_domain(domain))
    except Exception:
        return False


def recipient_targets(directory, address: str, authenticated: bool) -> tuple[list[str], list[str]]:
    """(local user addresses, remote addresses) for one RCPT, or SMTPError to refuse it."""
    if "@" not in address and address.lower() == "postmaster":
        for domain in directory.list_domains():
            found = directory.resolve(f"postmaster@{domain}")
            if found:
                return _split(found)
        raise USER_UNKNOWN
    domain = address.rpartition("@")[2]
    if _domain_served(directory, domain):
        found = directory.resolve(address)
        if not found:
            raise USER_UNKNOWN
        return _split(found)
    if not authenticated:
        raise RELAY_DENIED
    return [], [address]


def _split(found: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    local = [a for kind, a in found if kind == "local"]
    remote = [a for kind, a in found if kind != "local"]
    return local, remote


def sender_allowed(directory, user: str, sender: str) -> bool:
    """True when the authenticated ``user`` may use ``sender`` as MAIL FROM."""
    key = lookup_key(sender)
    if key is None:
        return False
    allowed = directory.senders_for(user)
    local, domain = key
    if f"{local}@{domain}" in allowed:
        return True
    if "+" in local:
        base = local.split("+", 1)[0]
        return bool(base) and f"{base}@{domain}" in allowed
    return False
