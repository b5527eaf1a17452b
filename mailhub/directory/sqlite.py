"""SQLiteDirectory: the embedded IDirectory backend (one SQLite file in the data dir).

WAL mode so the daemon reads while the CLI writes; every call queries the database, so the
running server sees CLI changes at once (lookups are indexed and take microseconds).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from zope.interface import implementer

from mailhub.directory.addresses import lookup_key, normalize_address, normalize_domain
from mailhub.directory.interfaces import DirectoryError, IDirectory
from mailhub.directory.passwords import hash_password, verify_password

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    domain TEXT NOT NULL REFERENCES domains(name),
    PRIMARY KEY (source, target)
);
"""

MAX_ALIAS_DEPTH = 10


@implementer(IDirectory)
class SQLiteDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers ---------------------------------------------------------------------------
    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _require_domain(self, domain: str, what: str) -> None:
        if not self.has_domain(domain):
            raise DirectoryError(
                f"cannot add {what}: domain {domain} is not served here; "
                f"add it first with: mailhub domain add {domain}"
            )

    # -- domains ---------------------------------------------------------------------------
    def add_domain(self, name: str) -> str:
        domain = normalize_domain(name)
        if self.has_domain(domain):
            raise DirectoryError(f"domain {domain} already exists")
        self._tx([("INSERT INTO domains (name, created) VALUES (?, ?)", (domain, time.time()))])
        return domain

    def remove_domain(self, name: str) -> str:
        domain = normalize_domain(name)
        if not self.has_domain(domain):
            raise DirectoryError(f"no such domain: {domain}")
        users = self._q("SELECT COUNT(*) FROM users WHERE domain = ?", (domain,))[0][0]
        aliases = self._q("SELECT COUNT(*) FROM aliases WHERE domain = ?", (domain,))[0][0]
        if users or aliases:
            raise DirectoryError(
                f"domain {domain} still has {users} user(s) and {aliases} alias(es); "
                "remove them first"
            )
        self._tx([("DELETE FROM domains WHERE name = ?", (domain,))])
        return domain

    def list_domains(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM domains ORDER BY name")]

    def has_domain(self, name: str) -> bool:
        try:
            domain = normalize_domain(name)
        except DirectoryError:
            return False
        return bool(self._q("SELECT 1 FROM domains WHERE name = ?", (domain,)))

    # -- users -----------------------------------------------------------------------------
    @staticmethod
    def _check_password_text(password: str) -> None:
        if not isinstance(password, str) or not password:
            raise DirectoryError("the password must not be empty")
        if password != password.strip("\r\n") or "\x00" in password:
            raise DirectoryError("the password must not contain NUL or line breaks")

    def add_user(self, address: str, password: str) -> str:
        addr = normalize_address(address)
        domain = addr.rpartition("@")[2]
        self._require_domain(domain, f"user {addr}")
        self._check_password_text(password)
        if self.user_exists(addr):
            raise DirectoryError(f"user {addr} already exists")
        if self._q("SELECT 1 FROM aliases WHERE source = ?", (addr,)):
            raise DirectoryError(f"{addr} is already an alias; remove the alias first")
        h = hash_password(password)
        self._tx([(
            "INSERT INTO users (address, domain, password_hash, created) VALUES (?, ?, ?, ?)",
            (addr, domain, h, time.time()),
        )])
        return addr

    def set_password(self, address: str, password: str) -> str:
        addr = normalize_address(address)
        if not self.user_exists(addr):
            raise DirectoryError(f"no such user: {addr}")
        self._check_password_text(password)
        self._tx([("UPDATE users SET password_hash = ? WHERE address = ?", (hash_password(password), addr))])
        return addr

    def remove_user(self, address: str) -> str:
        addr = normalize_address(address)
        if not self.user_exists(addr):
            raise DirectoryError(f"no such user: {addr}")
        self._tx([("DELETE FROM users WHERE address = ?", (addr,))])
        return addr

    def list_users(self) -> list[str]:
        return [r[0] for r in self._q("SELECT address FROM users ORDER BY address")]

    def user_exists(self, address: str) -> bool:
        key = lookup_key(address)
        if key is None:
            return False
        return bool(self._q("SELECT 1 FROM users WHERE address = ?", (f"{key[0]}@{key[1]}",)))

    def password_hash(self, address: str) -> tuple[str, str] | None:
        """(canonical address, stored hash) or None; lets a checker verify off-thread."""
        key = lookup_key(address)
        if key is None:
            return None
        rows = self._q("SELECT address, password_hash FROM users WHERE address = ?", (f"{key[0]}@{key[1]}",))
        return (rows[0][0], rows[0][1]) if rows else None

    def check_password(self, address: str, password: str) -> str | None:
        found = self.password_hash(address)
        if found is None or not password:
            return None
        return found[0] if verify_password(found[1], password) else None

    # -- aliases ---------------------------------------------------------------------------
    def add_alias(self, source: str, targets: list[str]) -> tuple[str, list[str]]:
        if source.startswith("@"):
            domain = normalize_domain(source[1:])
            src = "@" + domain
        else:
            src = normalize_address(source)
            domain = src.rpartition("@")[2]
        self._require_domain(domain, f"alias {src}")
        if not targets:
            raise DirectoryError("an alias needs at least one target address")
        norm = [normalize_address(t) for t in targets]
        if self.user_exists(src) if not src.startswith("@") else False:
            raise DirectoryError(f"{src} is a user; an alias cannot have the same address")
        existing = {r[0] for r in self._q("SELECT target FROM aliases WHERE source = ?", (src,))}
        new = [t for t in dict.fromkeys(norm) if t not in existing]
        if not new:
            raise DirectoryError(f"alias {src} already has those targets")
        self._tx([
            ("INSERT INTO aliases (source, target, domain) VALUES (?, ?, ?)", (src, t, domain))
            for t in new
        ])
        return src, norm

    def remove_alias(self, source: str) -> str:
        src = "@" + normalize_domain(source[1:]) if source.startswith("@") else normalize_address(source)
        if not self._q("SELECT 1 FROM aliases WHERE source = ?", (src,)):
            raise DirectoryError(f"no such alias: {src}")
        self._tx([("DELETE FROM aliases WHERE source = ?", (src,))])
        return src

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        out: dict[str, list[str]] = {}
        for src, tgt in self._q("SELECT source, target FROM aliases ORDER BY source, target"):
            out.setdefault(src, []).append(tgt)
        return sorted(out.items())

    # -- resolution ------------------------------------------------------------------------
    def _alias_targets(self, source: str) -> list[str]:
        return [r[0] for r in self._q("SELECT target FROM aliases WHERE source = ? ORDER BY target", (source,))]

    def resolve(self, address: str) -> list[tuple[str, str]]:
        key = lookup_key(address)
        if key is None:
            return []
        result: dict[str, str] = {}
        self._resolve(f"{key[0]}@{key[1]}", result, depth=0, seen=set())
        return [(kind, a) for a, kind in result.items()]

    def _resolve(self, addr: str, result: dict[str, str], depth: int, seen: set[str]) -> None:
        if addr in seen or depth > MAX_ALIAS_DEPTH:
            return
        seen.add(addr)
        local, _, domain = addr.rpartition("@")
        if not self.has_domain(domain):
            result.setdefault(addr, "remote")
            return
        if self.user_exists(addr):
            result.setdefault(addr, "local")
            return
        targets = self._alias_targets(addr)
        if not targets and "+" in local:
            base = local.split("+", 1)[0]
            if base:
                plain = f"{base}@{domain}"
                if self.user_exists(plain):
                    result.setdefault(plain, "local")
                    return
                targets = self._alias_targets(plain)
        if not targets:
            targets = self._alias_targets("@" + domain)
        for t in targets:
            self._resolve(t, result, depth + 1, seen)

    def senders_for(self, user: str) -> set[str]:
        addr = normalize_address(user)
        allowed = {addr}
        for src, _targets in self.list_aliases():
            if src.startswith("@"):
                continue
            if ("local", addr) in self.resolve(src):
                allowed.add(src)
        return allowed
