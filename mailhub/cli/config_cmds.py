"""``mailhub check-config``: validate the configuration and print the effective values."""
from __future__ import annotations

from mailhub.config import load


def register(sub, common) -> None:
    p = sub.add_parser("check-config", parents=[common],
                       help="validate the configuration and print the effective values")
    p.set_defaults(func=check_config)


def check_config(args) -> int:
    cfg = load(args.config)
    from mailhub.tls import server_context

    tls = cfg["tls"]
    if tls["certificate"]:
        server_context(tls["certificate"], tls["private_key"])  # loads and matches them
    print(cfg.to_toml(), end="")
    print(f"# configuration OK ({cfg.source})")
    return 0
