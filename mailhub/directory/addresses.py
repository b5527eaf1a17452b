"""Address syntax: split, validate and normalise mail addresses and domain names.

Normal form: local part lower-cased (matching is case-insensitive, as in Postfix and Dovecot),
domain lower-cased in IDNA (xn--) form without a trailing dot. UTF-8 local parts (SMTPUTF8)
are allowed; characters that could escape a Maildir path or smuggle routing are not.
"""
from __future__ import annotations

import re

import idna

from mailhub.directory.interfaces import DirectoryError

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# dot-atom text (RFC 5322 atext) plus any non-ASCII character (RFC 6531)
_LOCAL = re.compile(r"^[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+(\.[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*$")
# characters never allowed in a stored user's local part (path or routing tricks)
_LOCAL_FORBIDDEN = set("/%!@\\\"")


def normalize_domain(name: str) -> str:
    """IDNA, lower-case, no trailing dot; DirectoryError if it is not a host name."""
    if not isinstance(name, str):
        raise DirectoryError(f"malformed domain {name!r}")
    raw = name.strip().rstrip(".").lower()
    if not raw or raw.startswith("[") or " " in raw:
        raise DirectoryError(f"malformed domain {name!r}")
    try:
        if raw.isascii():
            ascii_name = raw
            if "xn--" in ascii_name:
                idna.decode(ascii_name)  # validate existing A-labels
        else:
            ascii_name = idna.encode(raw, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as e:
        raise DirectoryError(f"malformed domain {name!r}: {e}") from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or len(ascii_name) > 253 or not all(_DOMAIN_LABEL.match(l) for l in labels):
        raise DirectoryError(f"malformed domain {name!r} (expected a name like example.com)")
    if labels[-1].isdigit():
        raise DirectoryError(f"malformed domain {name!r} (an IP address is not a mail domain)")
    return ascii_name


def split_address(address: str) -> tuple[str, str]:
    """(local, domain) of an address, split at the last '@', not yet validated."""
    if not isinstance(address, str) or "@" not in address:
        raise DirectoryError(f"malformed address {address!r} (expected local@domain)")
    local, _, domain = address.strip().rpartition("@")
    return local, domain


def normalize_address(address: str) -> str:
    """A user or alias-target address in normal form, or DirectoryError."""
    local, domain = split_address(address)
    if address.strip().startswith("<") or not local:
        raise DirectoryError(f"malformed address {address!r} (expected local@domain)")
    if len(local.encode("utf-8")) > 64 or not _LOCAL.match(local) or set(local) & _LOCAL_FORBIDDEN:
        raise DirectoryError(f"malformed address {address!r}: invalid local part {local!r}")
    return f"{local.lower()}@{normalize_domain(domain)}"


def lookup_key(address: str) -> tuple[str, str] | None:
    """Best-effort normal form for a lookup (RCPT TO): None if it cannot be one of ours.

    Quoted local parts are unquoted; anything that still contains routing characters
    (``@``, ``%``, ``!``, ``/``) cannot match a user, so it resolves to nothing.
    """
    try:
        local, domain = split_address(address)
    except DirectoryError:
        return None
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    if not local or set(local) & _LOCAL_FORBIDDEN or not _LOCAL.match(local):
        return None
    try:
        domain = normalize_domain(domain)
    except DirectoryError:
        return None
    return local.lower(), domain
