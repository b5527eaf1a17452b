"""Fixtures for the IMAP tests: one real server per test module with two users, and helpers
to open imaplib / imapclient sessions and raw sockets to it."""
from __future__ import annotations

import imaplib
import itertools
import socket
import ssl

import pytest

from tests.conftest import MailhubEnv, MailhubServer

ALICE = ("alice@example.com", "pw-alice")
BOB = ("bob@example.com", "pw-bob")
IMAP_TOML = """
[imap]
auth_failure_delay = 0.0
"""

_counter = itertools.count()


class ImapServer:
    def __init__(self, env: MailhubEnv, server: MailhubServer):
        self.env = env
        self.server = server

    @property
    def port(self) -> int:
        return self.server.port("imap")

    @property
    def tls_port(self) -> int:
        return self.server.port("imaps")

    def imaplib(self, user=ALICE, login: bool = True) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=20)
        if login:
            m.login(*user)
        return m

    def imaplib_ssl(self, user=ALICE) -> imaplib.IMAP4_SSL:
        m = imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=insecure_ctx(), timeout=20)
        m.login(*user)
        return m

    def client(self, user=ALICE):
        from imapclient import IMAPClient
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=20)
        c.login(*user)
        return c

    def raw(self) -> "RawClient":
        return RawClient("127.0.0.1", self.port)


def insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawClient:
    """A line-level IMAP client for malformed input."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=20)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until_tag(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, text: bytes, tag: bytes = b"t1") -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tag(tag)

    def close(self):
        self.sock.close()


def unique(prefix: str = "T") -> str:
    return f"{prefix}{next(_counter)}x{id(_counter) % 1000}"


def make_message(subject: str = "hello", frm: str = "Bob <bob@example.org>",
                 to: str = "alice@example.com", body: str = "Hello there.\r\n") -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 23 Nov 2026 05:00:00 +0000\r\nMessage-ID: <{unique('m')}@example.org>\r\n"
            f"\r\n{body}").encode()


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("imap")
    env = MailhubEnv(root, extra_toml=IMAP_TOML)
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.add_user(*ALICE)
    env.add_user(*BOB)
    server = MailhubServer(env)
    server.start()
    yield ImapServer(env, server)
    server.stop()
