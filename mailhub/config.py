"""Configuration: the TOML schema, its embedded defaults, and validation.

Every key mailhub knows is declared in SCHEMA with its type and default; ``load()`` reads a
TOML file with tomllib, rejects unknown keys and wrong types with one error naming the key,
checks paths (certificate files exist, data dir writable) and returns a frozen ``Config``.
With no file the embedded defaults apply: data under ./mailhub-data, listeners on 127.0.0.1
high ports, so a newcomer can try mailhub without root.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem; the message names the key or path at fault."""


MiB = 1024 * 1024

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any, key: str) -> int:
    """Seconds from an int or a string like "30s", "15m", "4h", "5d"."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration (seconds or e.g. \"5d\"), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ConfigError(f"{key}: expected a duration (seconds or e.g. \"5d\"), got {value!r}")


# Types: "str", "int", "bool", "float", "duration", "strlist", "path", "optpath", "optstr",
# "strmap" (a table of string -> string).
LISTENER_NAMES = ("mx", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")

DEFAULT_PORTS = {
    "mx": 2525,
    "submission": 2587,
    "submissions": 2465,
    "pop3": 2110,
    "pop3s": 2995,
    "imap": 2143,
    "imaps": 2993,
}

SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "server": {
        "hostname": ("str", None),  # None: socket.getfqdn()
        "data_dir": ("path", "./mailhub-data"),
    },
    "listen": {
        name: ("strlist", [f"tcp:{port}:interface=127.0.0.1"])
        for name, port in DEFAULT_PORTS.items()
    },
    "tls": {
        "certificate": ("optpath", None),
        "private_key": ("optpath", None),
    },
    "smtp": {
        "max_message_size": ("int", 50 * MiB),
        "max_recipients": ("int", 100),
        "max_errors": ("int", 10),
        "idle_timeout": ("duration", 300),
        "max_connections_per_ip": ("int", 50),
        "auth_failure_delay": ("float", 1.0),
        # plaintext AUTH on submission from 127.0.0.0/8 and ::1 (as Postfix/Dovecot allow)
        "plaintext_auth_loopback": ("bool", True),
    },
    "queue": {
        "max_age": ("duration", 5 * 86400),
        "delay_warning": ("duration", 4 * 3600),
        "max_connections": ("int", 50),
        "max_connections_per_domain": ("int", 10),
        # waits between attempts (the last one repeats); short ones make tests fast
        "retry_schedule": ("strlist", ["1m", "5m", "15m", "30m", "1h"]),
    },
    "outbound": {
        "smarthost": ("optstr", None),
        "smarthost_username": ("optstr", None),
        "smarthost_password_file": ("optpath", None),
        "require_tls": ("bool", False),
        "routes": ("strmap", {}),
        "port": ("int", 25),                 # TCP port of remote MX hosts
        "connect_timeout": ("duration", 30),
        "timeout": ("duration", 300),        # per reply from the remote server
        "tls_ca_file": ("optpath", None),    # extra trusted CAs for STARTTLS verification
    },
    "dns": {
        "nameservers": ("strlist", []),
    },
    "pop3": {
        "idle_timeout": ("duration", 600),
        "auth_failure_delay": ("float", 1.0),
        "plaintext_auth_loopback": ("bool", True),  # USER/PASS, AUTH PLAIN without TLS
        "mark_seen": ("bool", True),  # RETR'd messages kept on the server get \Seen at QUIT
    },
    "imap": {
        "idle_timeout": ("duration", 1800),
        "append_limit": ("int", 50 * MiB),
        "auth_failure_delay": ("float", 1.0),
        "idle_max": ("duration", 1740),  # one IDLE may last 29 min (RFC 2177), then BYE
        "plaintext_auth_loopback": ("bool", True),  # LOGIN/AUTHENTICATE without TLS from 127/8, ::1
    },
}


def _check_type(kind: str, value: Any, key: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}")

    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind in ("optstr",):
        if not isinstance(value, str):
            raise bad("a string")
        return value or None
    if kind in ("path", "optpath"):
        if not isinstance(value, str) or not value:
            raise bad("a path (string)")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "duration":
        return parse_duration(value, key)
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return list(value)
    if kind == "strmap":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad("a table of strings")
        return {str(k).lower().rstrip("."): v for k, v in value.items()}
    raise AssertionError(kind)


@dataclass(frozen=True)
class Config:
    """The effective configuration: ``cfg.section["key"]`` plus a few derived helpers."""

    sections: dict[str, dict[str, Any]]
    source: str  # the file it came from, or "<embedded defaults>"
    base_dir: Path = field(default_factory=Path.cwd)

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    @property
    def hostname(self) -> str:
        return self.sections["server"]["hostname"]

    @property
    def data_dir(self) -> Path:
        return Path(self.sections["server"]["data_dir"])

    def listeners(self) -> dict[str, list[str]]:
        return {name: list(self.sections["listen"][name]) for name in LISTENER_NAMES}

    def to_toml(self) -> str:
        """The effective configuration as TOML (what check-config prints)."""
        out = [f"# effective configuration from {self.source}"]
        for section, keys in self.sections.items():
            plain = {k: v for k, v in keys.items() if not isinstance(v, dict)}
            tables = {k: v for k, v in keys.items() if isinstance(v, dict)}
            out.append(f"\n[{section}]")
            for k, v in plain.items():
                out.append(f"{k} = {_toml_value(v)}")
            for k, v in tables.items():
                out.append(f"\n[{section}.{k}]")
                for tk, tv in v.items():
                    out.append(f"{_toml_value(tk)} = {_toml_value(tv)}")
        return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    if v is None:
        return '""  # unset'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def load(path: str | os.PathLike | None = None, *, check_paths: bool = True) -> Config:
    """Read and validate the configuration; ``path=None`` gives the embedded defaults."""
    raw: dict[str, Any] = {}
    source = "<embedded defaults>"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            with open(p, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{p}: configuration file not found") from None
        except PermissionError:
            raise ConfigError(f"{p}: permission denied reading the configuration file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        base_dir = p.resolve().parent

    sections: dict[str, dict[str, Any]] = {}
    for section, value in raw.items():
        if section not in SCHEMA:
            raise ConfigError(
                f"unknown section [{section}] (known: {', '.join(SCHEMA)})"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: expected a table [{section}]")
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for k in given:
            if k not in keys:
                raise ConfigError(
                    f"unknown key {section}.{k} (known in [{section}]: {', '.join(keys)})"
                )
        values: dict[str, Any] = {}
        for k, (kind, default) in keys.items():
            key = f"{section}.{k}"
            if k in given:
                values[k] = _check_type(kind, given[k], key)
            else:
                values[k] = default.copy() if isinstance(default, (list, dict)) else default
        sections[section] = values

    server = sections["server"]
    if not server["hostname"]:
        server["hostname"] = socket.getfqdn() or socket.gethostname() or "localhost"
    # Relative paths in a config file are relative to that file; the embedded default is
    # relative to the working directory (./mailhub-data, as the README says).
    server["data_dir"] = str((base_dir / server["data_dir"]).resolve()) if path else str(
        Path(server["data_dir"]).resolve()
    )
    tls = sections["tls"]
    for k in ("certificate", "private_key"):
        if tls[k]:
            tls[k] = str((base_dir / tls[k]).resolve())
    if bool(tls["certificate"]) != bool(tls["private_key"]):
        raise ConfigError(
            "tls.certificate and tls.private_key go together: set both, or neither for a "
            "self-signed certificate in the data dir"
        )
    out = sections["outbound"]
    for k in ("smarthost_password_file", "tls_ca_file"):
        if out[k]:
            out[k] = str((base_dir / out[k]).resolve())
    for name in LISTENER_NAMES:
        for desc in sections["listen"][name]:
            if not desc.strip():
                raise ConfigError(f"listen.{name}: empty endpoint string")

    cfg = Config(sections=sections, source=source, base_dir=base_dir)
    if check_paths:
        check_filesystem(cfg)
    return cfg


def check_filesystem(cfg: Config) -> None:
    """Certificate files must exist and be readable; the data dir must be writable."""
    tls = cfg["tls"]
    for k in ("certificate", "private_key"):
        p = tls[k]
        if p:
            if not os.path.isfile(p):
                raise ConfigError(f"tls.{k}: file not found: {p}")
            if not os.access(p, os.R_OK):
                raise ConfigError(f"tls.{k}: file not readable: {p}")
    pw = cfg["outbound"]["smarthost_password_file"]
    if pw and not os.path.isfile(pw):
        raise ConfigError(f"outbound.smarthost_password_file: file not found: {pw}")
    data = cfg.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"server.data_dir: cannot create {data}: {e.strerror}") from None
    if not data.is_dir():
        raise ConfigError(f"server.data_dir: not a directory: {data}")
    if not os.access(data, os.W_OK | os.X_OK):
        raise ConfigError(f"server.data_dir: not writable: {data}")
    probe = data / f".write-test-{os.getpid()}"
    try:  # os.access says yes to root even on a read-only or immutable directory
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"server.data_dir: not writable: {data} ({e.strerror})") from None
