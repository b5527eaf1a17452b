"""``mailhub domain|user|alias ...``: manage the directory (and create/remove mail trees)."""
from __future__ import annotations

import getpass
import sys

from mailhub.cli.context import open_context
from mailhub.cli.main import CLIError
from mailhub.directory.addresses import normalize_address

# called as hook(ctx, domain) after `domain add` (the DKIM key generator registers here)
DOMAIN_ADDED_HOOKS: list = []


def register(sub, common) -> None:
    d = sub.add_parser("domain", help="manage served domains").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = d.add_parser("add", parents=[common], help="serve a domain")
    p.add_argument("name")
    p.set_defaults(func=domain_add)
    p = d.add_parser("remove", parents=[common], help="stop serving a domain (must be empty)")
    p.add_argument("name")
    p.set_defaults(func=domain_remove)
    p = d.add_parser("list", parents=[common], help="list served domains")
    p.set_defaults(func=domain_list)

    u = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = u.add_parser("add", parents=[common], help="add a user (creates their mailbox)")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=user_add)
    p = u.add_parser("passwd", parents=[common], help="change a user's password")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=user_passwd)
    p = u.add_parser("remove", parents=[common], help="remove a user (mail kept unless --purge)")
    p.add_argument("address")
    p.add_argument("--purge", action="store_true", help="also delete the user's mail")
    p.set_defaults(func=user_remove)
    p = u.add_parser("list", parents=[common], help="list users")
    p.set_defaults(func=user_list)

    a = sub.add_parser("alias", help="manage aliases").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = a.add_parser("add", parents=[common],
                     help="add an alias; SOURCE @example.com is a catch-all for the domain")
    p.add_argument("source")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.set_defaults(func=alias_add)
    p = a.add_parser("remove", parents=[common], help="remove an alias")
    p.add_argument("source")
    p.set_defaults(func=alias_remove)
    p = a.add_parser("list", parents=[common], help="list aliases")
    p.set_defaults(func=alias_list)


def _read_password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CLIError("the password must not be empty (nothing read from stdin)")
        return password
    if not sys.stdin.isatty():
        raise CLIError("no terminal to prompt for the password; use --password-stdin")
    first = getpass.getpass("Password: ")
    if not first:
        raise CLIError("the password must not be empty")
    second = getpass.getpass("Repeat password: ")
    if first != second:
        raise CLIError("the passwords do not match; nothing changed")
    return first


def domain_add(args) -> int:
    ctx = open_context(args)
    name = ctx.directory.add_domain(args.name)
    for hook in DOMAIN_ADDED_HOOKS:
        hook(ctx, name)
    print(f"domain {name} added")
    return 0


def domain_remove(args) -> int:
    ctx = open_context(args)
    print(f"domain {ctx.directory.remove_domain(args.name)} removed")
    return 0


def domain_list(args) -> int:
    for name in open_context(args).directory.list_domains():
        print(name)
    return 0


def user_add(args) -> int:
    ctx = open_context(args)
    addr = normalize_address(args.address)
    domain = addr.rpartition("@")[2]
    if not ctx.directory.has_domain(domain):
        raise CLIError(f"domain {domain} is not served here; add it first with: "
                       f"mailhub domain add {domain}")
    if ctx.directory.user_exists(addr):
        raise CLIError(f"user {addr} already exists")
    password = _read_password(args)
    addr = ctx.directory.add_user(addr, password)
    try:
        path = ctx.store.create_user(addr)
    except OSError as e:
        ctx.directory.remove_user(addr)
        raise CLIError(f"cannot create the mailbox of {addr}: {e.strerror}; nothing changed")
    ctx.fix_ownership(path)
    ctx.fix_ownership(path.parent, recursive=False)  # the domain's directory
    print(f"user {addr} added (mail in {path})")
    return 0


def user_passwd(args) -> int:
    ctx = open_context(args)
    addr = normalize_address(args.address)
    if not ctx.directory.user_exists(addr):
        raise CLIError(f"no such user: {addr}")
    ctx.directory.set_password(addr, _read_password(args))
    print(f"password of {addr} changed")
    return 0


def user_remove(args) -> int:
    ctx = open_context(args)
    addr = ctx.directory.remove_user(args.address)
    kept = ctx.store.remove_user(addr, purge=args.purge)
    if args.purge:
        print(f"user {addr} removed, mail deleted")
    elif kept is not None:
        print(f"user {addr} removed; mail kept in {kept}")
    else:
        print(f"user {addr} removed")
    return 0


def user_list(args) -> int:
    for addr in open_context(args).directory.list_users():
        print(addr)
    return 0


def alias_add(args) -> int:
    ctx = open_context(args)
    src, targets = ctx.directory.add_alias(args.source, args.targets)
    print(f"alias {src} -> {', '.join(targets)}")
    return 0


def alias_remove(args) -> int:
    print(f"alias {open_context(args).directory.remove_alias(args.source)} removed")
    return 0


def alias_list(args) -> int:
    for src, targets in open_context(args).directory.list_aliases():
        print(f"{src} -> {', '.join(targets)}")
    return 0
