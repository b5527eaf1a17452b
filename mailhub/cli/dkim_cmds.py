"""``mailhub dkim rotate DOMAIN`` and ``mailhub dns-records DOMAIN``; generates a DKIM key
when ``mailhub domain add`` adds a domain (a DOMAIN_ADDED_HOOKS entry)."""
from __future__ import annotations

import re
import sys

from mailhub.cli import directory_cmds
from mailhub.cli.context import open_context
from mailhub.cli.main import CLIError
from mailhub.dkim import DKIMKeys

STANDARD_PORTS = {"submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
                  "pop3": 110, "pop3s": 995}


def register(sub, common) -> None:
    d = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = d.add_parser("rotate", parents=[common],
                     help="make a new signing key (new selector) for a domain")
    p.add_argument("domain")
    p.set_defaults(func=dkim_rotate)
    p = sub.add_parser("dns-records", parents=[common],
                       help="print the DNS records to publish for a domain")
    p.add_argument("domain")
    p.set_defaults(func=dns_records)


def _keys(ctx) -> DKIMKeys:
    return DKIMKeys(ctx.cfg.data_dir / "dkim")


def _served(ctx, name: str) -> str:
    dom = name.strip().rstrip(".").lower()
    if not dom.isascii():
        dom = dom.encode("idna").decode("ascii")
    if not ctx.directory.has_domain(dom):
        raise CLIError(f"domain {dom} is not served here (mailhub domain add {dom})")
    return dom


def generate_key(ctx, domain: str) -> str:
    keys = _keys(ctx)
    selector = keys.generate(domain)
    ctx.fix_ownership(keys.root)
    return selector


def _on_domain_added(ctx, domain: str) -> None:
    selector = generate_key(ctx, domain)
    # on stderr: stdout of `domain add` stays the one line scripts expect
    print(f"note: DKIM key generated for {domain} (selector {selector}); publish the DNS "
          f"records shown by: mailhub dns-records {domain}", file=sys.stderr)


if _on_domain_added not in directory_cmds.DOMAIN_ADDED_HOOKS:
    directory_cmds.DOMAIN_ADDED_HOOKS.append(_on_domain_added)


def dkim_rotate(args) -> int:
    ctx = open_context(args)
    dom = _served(ctx, args.domain)
    selector = generate_key(ctx, dom)
    sel, txt = _keys(ctx).public_record(dom)
    print(f"new DKIM key for {dom}: selector {selector}; mail is signed with it from now on.")
    print("Publish this record (keep the old selector's record until mail signed with it "
          "has been delivered, a few days):")
    print(f"{sel}._domainkey.{dom}. IN TXT {_txt(txt)}")
    return 0


def _txt(value: str) -> str:
    """A TXT value as DNS zone-file strings of at most 255 characters."""
    parts = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    return " ".join(f'"{p}"' for p in parts)


def _port(cfg, listener: str) -> int:
    for desc in cfg.listeners().get(listener, []):
        m = re.match(r"^(?:tcp6?|ssl):(\d+)", desc) or re.match(r"^(\d+)$", desc)
        if m and int(m.group(1)):
            return int(m.group(1))
    return STANDARD_PORTS[listener]


def dns_records(args) -> int:
    ctx = open_context(args)
    dom = _served(ctx, args.domain)
    host = ctx.cfg.hostname.rstrip(".") + "."
    keys = _keys(ctx)
    rec = keys.public_record(dom)
    if rec is None:
        generate_key(ctx, dom)
        rec = keys.public_record(dom)
    sel, txt = rec
    d = dom + "."
    rows = [
        (d, "MX", f"10 {host}"),
        (d, "TXT", _txt("v=spf1 mx -all")),
        (f"{sel}._domainkey.{d}", "TXT", _txt(txt)),
        (f"_dmarc.{d}", "TXT", _txt(f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{dom}")),
    ]
    srv = [("_submission", "submission"), ("_submissions", "submissions"), ("_imap", "imap"),
           ("_imaps", "imaps"), ("_pop3", "pop3"), ("_pop3s", "pop3s")]
    listeners = ctx.cfg.listeners()
    for label, name in srv:
        if listeners.get(name):
            rows.append((f"{label}._tcp.{d}", "SRV", f"0 1 {_port(ctx.cfg, name)} {host}"))
        else:
            rows.append((f"{label}._tcp.{d}", "SRV", "0 0 0 ."))  # RFC 6186: not offered
    rows.append((f"autoconfig.{d}", "CNAME", host))
    width = max(len(r[0]) for r in rows)
    print(f"; DNS records for {dom} (mail host {host}); publish them in the {dom} zone")
    for name, rtype, value in rows:
        print(f"{name:<{width}} 3600 IN {rtype:<5} {value}")
    return 0
