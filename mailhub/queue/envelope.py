"""Envelope: the durable record of one queued message (sender, per-recipient state, schedule).

Pure data + JSON (de)serialisation; no I/O here (spool.py writes it). Recipient states:
``pending`` (still to deliver), ``sent`` (a server accepted it: never sent again), ``failed``
(permanent failure: bounced). A message leaves the queue when no recipient is pending.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field

PENDING, SENT, FAILED = "pending", "sent", "failed"


def new_queue_id() -> str:
    """Sortable by creation time, unique: 13 hex digits of microseconds + 5 random."""
    return f"{int(time.time() * 1e6):013X}{secrets.token_hex(3)[:5].upper()}"


@dataclass
class Recipient:
    addr: str
    state: str = PENDING
    status: str = ""       # RFC 3463 status, e.g. "4.4.1"
    diag: str = ""         # the remote reply or our own explanation
    mta: str = ""          # remote host that gave the final answer
    when: float = 0.0
    notified: bool = False  # a DSN reported this recipient's failure

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2].lower()


@dataclass
class Envelope:
    id: str
    sender: str                      # "" for the null sender <>
    recipients: list[Recipient]
    created: float = field(default_factory=time.time)
    next_attempt: float = 0.0
    attempts: int = 0
    last_error: str = ""
    dkim_domain: str | None = None
    prefix: str = ""                 # header lines prepended on the wire (DKIM-Signature)
    size: int = 0
    warned: bool = False             # delay warning sent
    kind: str = "mail"               # "mail" or "dsn"

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        raw = json.loads(data)
        rcpts = [Recipient(**r) for r in raw.pop("recipients")]
        known = set(cls.__dataclass_fields__)
        return cls(recipients=rcpts, **{k: v for k, v in raw.items() if k in known})


def retry_delay(schedule: list[int], attempts: int) -> int:
    """Seconds to wait after ``attempts`` failed attempts (1-based); last step repeats."""
    if not schedule:
        return 3600
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def needs_smtputf8(sender: str, recipients: list[str], head: bytes) -> bool:
    """True when the envelope has a non-ASCII address or the header section carries UTF-8
    (an internationalised message, RFC 6532); legacy 8-bit headers that are not UTF-8 do not
    count (they are sent as they are, like Postfix does)."""
    for a in [sender, *recipients]:
        if not a.isascii():
            return True
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def wire_address(addr: str) -> str:
    """The address as sent in MAIL/RCPT: an internationalised domain as its A-label, so
    only a non-ASCII local part needs SMTPUTF8."""
    local, at, domain = addr.rpartition("@")
    if not at or domain.isascii():
        return addr
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return addr


def header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[: end + 2]


__all__ = ["Envelope", "Recipient", "PENDING", "SENT", "FAILED", "new_queue_id",
           "retry_delay", "needs_smtputf8", "header_section", "wire_address"]
