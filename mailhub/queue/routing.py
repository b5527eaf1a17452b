"""Where a destination's mail goes: the smarthost, an ``[outbound.routes]`` entry, or the
domain's MX hosts (twisted.names). ``targets(dest)`` fires with an ordered list of Target
(host name for TLS checks, IP address, port, session options)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.internet import defer

from mailhub.dns import DNSPermanentError, DNSTemporaryError
from mailhub.queue.smtpclient import SessionOptions

SMARTHOST = "[smarthost]"


@dataclass(frozen=True)
class Target:
    host: str
    ip: str
    port: int
    opts: SessionOptions


def parse_hostport(spec: str, default_port: int) -> tuple[str, int]:
    """"host", "host:port", "[host]:port", "[::1]:25" -> (host, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, default_port


class Router:
    def __init__(self, cfg, resolver, reactor):
        self.cfg = cfg
        self.resolver = resolver
        self.reactor = reactor
        out = cfg["outbound"]
        self.port = out["port"]
        self.routes = dict(out["routes"])
        self.base = SessionOptions(
            helo=cfg.hostname, timeout=float(out["timeout"]),
            connect_timeout=float(out["connect_timeout"]), require_tls=out["require_tls"],
            ca_file=out["tls_ca_file"],
        )
        self.smarthost = None
        if out["smarthost"]:
            host, port = parse_hostport(out["smarthost"], 587)
            password = None
            if out["smarthost_password_file"]:
                with open(out["smarthost_password_file"], encoding="utf-8") as f:
                    password = f.read().strip("\r\n")
            self.smarthost = (host, port, replace(
                self.base, username=out["smarthost_username"], password=password,
                implicit_tls=port == 465))
        self._cache: dict[str, tuple[float, list[Target]]] = {}

    def destination(self, domain: str) -> str:
        """The key mail is grouped (and connections pooled) by."""
        domain = domain.lower()
        if domain in self.routes:  # like Postfix: transport_maps win over relayhost
            return domain
        return SMARTHOST if self.smarthost else domain

    @defer.inlineCallbacks
    def targets(self, dest: str):
        now = self.reactor.seconds()
        hit = self._cache.get(dest)
        if hit and hit[0] > now:
            return hit[1]
        if dest == SMARTHOST:
            host, port, opts = self.smarthost
            hosts = [(host, port, opts)]
        elif dest in self.routes:
            host, port = parse_hostport(self.routes[dest], self.port)
            hosts = [(host, port, self.base)]
        else:
            mx = yield self.resolver.mx_hosts(dest)
            hosts = [(h, self.port, self.base) for h in mx]
        out: list[Target] = []
        temp = None
        for host, port, opts in hosts:
            try:
                ips = yield self.resolver.addresses(host)
            except DNSTemporaryError as e:
                temp = e
                continue
            out.extend(Target(host, ip, port, opts) for ip in ips)
        if not out:
            if temp is not None:
                raise temp
            raise DNSPermanentError(f"no address for the mail hosts of {dest}: "
                                    f"{', '.join(h for h, _, _ in hosts)}")
        self._cache[dest] = (now + 60, out)
        return out
