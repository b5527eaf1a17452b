"""``mailhub`` command line: argument parsing and dispatch to the command modules.

Every command reads the same configuration as the daemon (``--config PATH``, default the
embedded one). Errors print one line ``mailhub: error: ...`` to stderr and exit 1; nothing
is changed when a command fails.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from mailhub.config import ConfigError

# modules with register(subparsers); each adds its commands with set_defaults(func=...)
COMMAND_MODULES = [
    "mailhub.cli.config_cmds",
    "mailhub.cli.directory_cmds",
    "mailhub.cli.queue_cmds",   # queue list|flush|remove (outbound)
    "mailhub.cli.dkim_cmds",    # dkim rotate, dns-records (outbound/DKIM)
]


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: embedded defaults)")
    parser = argparse.ArgumentParser(
        prog="mailhub", parents=[common],
        description="Administer a mailhub mail server (domains, users, aliases, queue). "
                    "Run the server with: twistd -n mailhub [--config PATH]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # that command group is not in this build
            raise
        mod.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        result = args.func(args)
    except (CLIError, ConfigError) as e:
        print(f"mailhub: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mailhub: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # DirectoryError, StoreError, ...: one clear line, no traceback
        from mailhub.directory import DirectoryError
        from mailhub.store import StoreError

        if isinstance(e, (DirectoryError, StoreError, OSError)):
            print(f"mailhub: error: {e}", file=sys.stderr)
            return 1
        raise
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
