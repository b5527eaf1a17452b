"""A fake Internet on loopback for the outbound tests, run as a subprocess:

- a twisted.names DNS server (UDP + TCP on 127.0.0.1) answering from a JSON zone
  ``{"name": {"MX": [[pref, host]], "A": [...], "AAAA": [...], "TXT": [...]}}``; unknown names
  get NXDOMAIN;
- SMTP receivers, one per loopback address (127.0.0.x), all on the same port, that record
  every accepted message as JSON in ``<out>/<receiver name>/``.

Receiver behaviour per recipient local part: ``reject*`` -> 550, ``tempfail*`` -> 451 always,
``defer1*`` -> 451 the first time (per receiver), then accepted; ``slow*`` -> accepted, the
end-of-data reply 50 ms late; anything else accepted.
Receiver options: ``starttls``, ``smtputf8``, ``pipelining`` (default true), ``size``,
``auth`` ({"user", "password"}: MAIL needs AUTH), ``greeting`` (e.g. "421 busy"),
``drop_after`` (drop the connection at the MAIL after that many messages on it),
``garbage`` (answer MAIL with a line that is not an SMTP reply).

    python -m tests.queue.fakenet SPEC.json   # writes <out>/ready.json with the ports
"""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from twisted.internet import defer, reactor, ssl
from twisted.names import common, dns, error, server
from twisted.protocols.basic import LineReceiver
from twisted.internet.protocol import Factory


class ZoneResolver(common.ResolverBase):
    def __init__(self, zone: dict):
        super().__init__()
        self.zone = {k.lower().rstrip("."): v for k, v in zone.items()}

    def _lookup(self, name, cls, type, timeout):
        key = name.decode().lower().rstrip(".")
        if key not in self.zone:
            return defer.fail(error.DomainError(name))
        rrs = self.zone[key]
        answers = []
        for rtype, values in rrs.items():
            t = getattr(dns, rtype)
            if t != type and not (type == dns.ALL_RECORDS):
                continue
            for v in values:
                if rtype == "MX":
                    payload = dns.Record_MX(v[0], v[1].encode(), ttl=60)
                elif rtype == "A":
                    payload = dns.Record_A(v, ttl=60)
                elif rtype == "AAAA":
                    payload = dns.Record_AAAA(v, ttl=60)
                elif rtype == "TXT":
                    chunks = [v[i:i + 255].encode() for i in range(0, len(v), 255)]
                    payload = dns.Record_TXT(*chunks, ttl=60)
                else:
                    continue
                answers.append(dns.RRHeader(name, t, dns.IN, 60, payload, auth=True))
        return defer.succeed((answers, [], []))


class Receiver(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, spec: dict, out: Path, state: dict, tls_opts):
        self.spec = spec
        self.out = out
        self.state = state
        self.tls_opts = tls_opts
        self.reset()
        self.tls = False
        self.authed = None
        self.data_lines = None
        self.auth_step = None
        self.on_conn = 0

    def reset(self):
        self.mail_from = None
        self.params = ""
        self.rcpts = []

    def connectionMade(self):
        self.state["connections"] = self.state.get("connections", 0) + 1
        (self.out / "connections").write_text(str(self.state["connections"]))
        self.transport.setTcpNoDelay(True)
        greeting = self.spec.get("greeting", "220 fake ESMTP")
        self.send(greeting)
        if not greeting.startswith("220"):
            self.transport.loseConnection()

    def send(self, line: str):
        self.transport.write(line.encode() + b"\r\n")

    def lineReceived(self, line: bytes):
        if self.data_lines is not None:
            if line == b".":
                self.finish_data()
            else:
                self.data_lines.append(line[1:] if line.startswith(b".") else line)
            return
        if self.auth_step is not None:
            return self.auth_continue(line)
        cmd = line.decode("utf-8", "replace")
        verb = cmd.split(" ", 1)[0].upper()
        arg = cmd[len(verb):].strip()
        handler = getattr(self, "do_" + verb.replace("-", "_"), None)
        if handler is None:
            self.send("502 5.5.2 unknown command")
        else:
            handler(arg)

    def do_EHLO(self, arg):
        ext = ["250-fake.test hello", "250-ENHANCEDSTATUSCODES"]
        if self.spec.get("pipelining", True):
            ext.append("250-PIPELINING")
        ext.append("250-8BITMIME")
        if self.spec.get("size"):
            ext.append(f"250-SIZE {self.spec['size']}")
        if self.spec.get("smtputf8"):
            ext.append("250-SMTPUTF8")
        if self.spec.get("starttls") and not self.tls:
            ext.append("250-STARTTLS")
        if self.spec.get("auth") and self.tls:
            ext.append("250-AUTH PLAIN LOGIN")
        ext.append("250 HELP")
        self.transport.write("".join(e + "\r\n" for e in ext).encode())

    def do_HELO(self, arg):
        self.send("250 fake.test")

    def do_STARTTLS(self, arg):
        self.send("220 2.0.0 go ahead")
        self.transport.startTLS(self.tls_opts)
        self.tls = True
        self.reset()

    def do_AUTH(self, arg):
        mech, _, initial = arg.partition(" ")
        if mech.upper() == "PLAIN":
            if initial:
                return self.check_plain(initial.encode())
            self.auth_step = "plain"
            self.send("334 ")
        elif mech.upper() == "LOGIN":
            self.auth_step = "login-user"
            self.send("334 VXNlcm5hbWU6")
        else:
            self.send("504 5.5.4 unknown mechanism")

    def check_plain(self, token: bytes):
        try:
            _, user, pw = base64.b64decode(token).split(b"\0")
        except ValueError:
            return self.send("501 5.5.2 bad token")
        self.check(user.decode(), pw.decode())

    def auth_continue(self, line: bytes):
        step, self.auth_step = self.auth_step, None
        if step == "plain":
            return self.check_plain(line)
        if step == "login-user":
            self.login_user = base64.b64decode(line).decode()
            self.auth_step = "login-pw"
            return self.send("334 UGFzc3dvcmQ6")
        self.check(self.login_user, base64.b64decode(line).decode())

    def check(self, user, pw):
        want = self.spec.get("auth") or {}
        if user == want.get("user") and pw == want.get("password"):
            self.authed = user
            self.send("235 2.7.0 authenticated")
        else:
            self.send("535 5.7.8 bad credentials")

    def do_MAIL(self, arg):
        if self.spec.get("garbage"):
            self.transport.write(b"this is not SMTP\r\n")
            return
        if self.spec.get("drop_after") and self.on_conn >= self.spec["drop_after"]:
            self.transport.abortConnection()  # like a server's idle timeout, at a bad time
            return
        if self.spec.get("auth") and not self.authed:
            return self.send("530 5.7.0 authentication required")
        addr, _, params = arg[5:].strip().partition(" ") if arg.upper().startswith("FROM:") else ("", "", "")
        self.mail_from = addr.strip("<>")
        self.params = params
        self.rcpts = []
        self.send("250 2.1.0 ok")

    def do_RCPT(self, arg):
        if self.mail_from is None:
            return self.send("503 5.5.1 MAIL first")
        addr = arg[3:].strip().strip("<>")
        local = addr.split("@")[0].lower()
        if local.startswith("reject"):
            return self.send(f"550 5.1.1 <{addr}>: no such user here")
        if local.startswith("tempfail"):
            return self.send("451 4.3.0 try again later")
        if local.startswith("defer1"):
            seen = self.state.setdefault("deferred", [])
            if addr not in seen:
                seen.append(addr)
                return self.send("451 4.7.1 greylisted, try again")
        self.rcpts.append(addr)
        self.send("250 2.1.5 ok")

    def do_DATA(self, arg):
        if not self.rcpts:
            return self.send("554 5.5.1 no valid recipients")
        self.data_lines = []
        self.send("354 go ahead")

    def finish_data(self):
        data = b"\r\n".join(self.data_lines) + b"\r\n"
        self.data_lines = None
        self.on_conn += 1
        n = self.state["count"] = self.state.get("count", 0) + 1
        rec = {"mail_from": self.mail_from, "params": self.params, "rcpts": self.rcpts,
               "tls": self.tls, "auth": self.authed,
               "data": data.decode("utf-8", "surrogateescape")}
        tmp = self.out / f".{n:06d}.tmp"
        tmp.write_text(json.dumps(rec, ensure_ascii=False, default=str), errors="surrogateescape")
        os.replace(tmp, self.out / f"{n:06d}.json")
        slow = any(r.split("@")[0].lower().startswith("slow") for r in self.rcpts)
        self.reset()
        if slow:  # a slow disk on the receiving side: the reply comes 50 ms later
            reactor.callLater(0.05, self.send, f"250 2.0.0 ok queued as F{n}")
        else:
            self.send(f"250 2.0.0 ok queued as F{n}")

    def do_RSET(self, arg):
        self.reset()
        self.send("250 2.0.0 ok")

    def do_NOOP(self, arg):
        self.send("250 2.0.0 ok")

    def do_QUIT(self, arg):
        self.send("221 2.0.0 bye")
        self.transport.loseConnection()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    from mailhub.tls import generate_self_signed

    cert, key = out / "cert.pem", out / "key.pem"
    generate_self_signed(cert, key, spec.get("tls_name", "mx.fake.test"))
    tls_opts = ssl.PrivateCertificate.loadPEM(key.read_text() + cert.read_text()).options()

    resolver = ZoneResolver(spec.get("zone", {}))
    factory = server.DNSServerFactory(authorities=[resolver])
    for attempt in range(50):  # UDP and TCP on the same port number
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        dns_port = udp.getHost().port
        try:
            reactor.listenTCP(dns_port, factory, interface="127.0.0.1")
            break
        except Exception:  # noqa: BLE001
            udp.stopListening()

    receivers = spec.get("receivers", [])
    port = spec.get("smtp_port", 0)
    for attempt in range(20):
        listening = []
        try:
            for r in receivers:
                (out / r["name"]).mkdir(exist_ok=True)
                state: dict = {}

                def build(addr, r=r, state=state):
                    return Receiver(r, out / r["name"], state, tls_opts)
                f = Factory.forProtocol(Receiver)
                f.buildProtocol = build
                p = reactor.listenTCP(port, f, interface=r["ip"])
                port = p.getHost().port
                listening.append(p)
            break
        except Exception:  # noqa: BLE001  (port taken on one address: try another)
            for p in listening:
                p.stopListening()
            port = 0
    ready = {"dns_port": dns_port, "smtp_port": port, "cert": str(cert), "pid": os.getpid()}
    (out / "ready.json.tmp").write_text(json.dumps(ready))
    os.replace(out / "ready.json.tmp", out / "ready.json")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
