"""Delivery status notifications (RFC 3464): build the multipart/report for failed (or
delayed) recipients of one queued message. Pure: envelope + original header bytes in,
message bytes (CRLF) out.
"""
from __future__ import annotations

import email.utils
import re
import secrets
import time

from mailhub.queue.envelope import Envelope, Recipient

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _ascii(text: str, limit: int = 900) -> str:
    return _UNSAFE.sub("?", text)[:limit]


def _date(t: float) -> str:
    return email.utils.formatdate(t, localtime=False)


def build_dsn(env: Envelope, recipients: list[Recipient], original_headers: bytes,
              hostname: str, action: str = "failed", retry_until: float | None = None) -> bytes:
    """One DSN for ``recipients`` of ``env``; ``action`` is "failed" or "delayed"."""
    boundary = f"{env.id}.{secrets.token_hex(8)}/{hostname}"
    now = time.time()
    delayed = action == "delayed"
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    utf8_headers = not original_headers.isascii()
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{env.sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{env.id}.{secrets.token_hex(6)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if delayed:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying"
            + (f" until {_date(retry_until)}." if retry_until else "."),
            "You do not need to resend the message.",
        ]
    else:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    lines.append("")
    for r in recipients:
        detail = r.diag or "no details"
        lines.append(f"<{r.addr}>: {detail}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailhub-Queue-ID: {env.id}",
        f"Arrival-Date: {_date(env.created)}",
        "",
    ]
    for r in recipients:
        status = r.status or ("4.0.0" if delayed else "5.0.0")
        lines += [
            f"Final-Recipient: {'utf-8' if not r.addr.isascii() else 'rfc822'}; "
            f"{_ascii(r.addr) if r.addr.isascii() else r.addr}",
            f"Action: {action}",
            f"Status: {status}",
        ]
        if r.mta:
            lines.append(f"Remote-MTA: dns; {_ascii(r.mta)}")
        if r.diag:
            kind = "smtp" if r.diag[:3].isdigit() else "x-mailhub"
            lines.append(f"Diagnostic-Code: {kind}; {_ascii(r.diag)}")
        lines.append(f"Last-Attempt-Date: {_date(r.when or now)}")
        if delayed and retry_until:
            lines.append(f"Will-Retry-Until: {_date(retry_until)}")
        lines.append("")
    lines += [
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: " + ("message/global-headers" if utf8_headers else "text/rfc822-headers"),
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    orig = original_headers.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return head + orig + b"\r\n\r\n" + f"--{boundary}--\r\n".encode("ascii")
