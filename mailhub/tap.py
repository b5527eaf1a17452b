"""The twistd plugin's Options and makeService (``twistd -n mailhub [--config PATH]``)."""
from __future__ import annotations

from twisted.python import usage

from mailhub.config import ConfigError, load


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Run the mailhub mail server. Without --config it uses the embedded defaults: "
                "data in ./mailhub-data, listeners on 127.0.0.1 high ports (mx 2525, submission "
                "2587, submissions 2465, pop3 2110, pop3s 2995, imap 2143, imaps 2993).")
    optParameters = [["config", "c", None, "path of the TOML configuration file"]]


def makeService(options):
    from mailhub.service import StartupError, build_service

    try:
        cfg = load(options["config"])
        return build_service(cfg)
    except ConfigError as e:
        raise StartupError(f"configuration error: {e}") from None
