"""MailResolver: where to deliver mail for a domain (RFC 5321 section 5), on twisted.names.

``mx_hosts(domain)`` fires with the MX host names in preference order (ties shuffled), or
``[domain]`` when the domain has no MX but has an address (the implicit MX); it fails with
NullMX for RFC 7505 ``MX 0 .``, DNSPermanentError for NXDOMAIN / no address at all, and
DNSTemporaryError for timeouts and SERVFAIL. ``addresses(host)`` fires with the IPv4 then
IPv6 addresses of a host. ``[dns] nameservers = ["127.0.0.1:5353"]`` replaces the system
resolver (resolv.conf); /etc/hosts is consulted for addresses either way.
"""
from __future__ import annotations

import ipaddress
import random

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import cache, client, dns, error, hosts as hostsModule, resolve

log = Logger(namespace="mailhub.dns")

# one UDP port per query: without this every lookup logs two "Starting/Stopping" lines
dns.DNSDatagramProtocol.noisy = False

TIMEOUTS = (2, 5, 10)


class DNSTemporaryError(Exception):
    """The lookup may succeed later (timeout, SERVFAIL, refused)."""


class DNSPermanentError(Exception):
    """The domain does not exist or has no address to deliver to."""


class NullMX(DNSPermanentError):
    """The domain publishes ``MX 0 .``: it accepts no mail (RFC 7505)."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:5353", "[::1]:53" or "::1" -> (host, port)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
        return host, port
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, 53


def build_resolver(nameservers: list[str]):
    """An IResolver: the configured servers (plus /etc/hosts), else the system resolver."""
    if not nameservers:
        return client.createResolver()
    servers = [parse_nameserver(s) for s in nameservers]
    return resolve.ResolverChain([
        hostsModule.Resolver(b"/etc/hosts"),
        cache.CacheResolver(),
        client.Resolver(servers=servers),
    ])


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def to_ascii(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        domain.encode("ascii")
        return domain
    except UnicodeEncodeError:
        return domain.encode("idna").decode("ascii")


class MailResolver:
    def __init__(self, resolver):
        self.resolver = resolver

    @classmethod
    def from_config(cls, cfg) -> "MailResolver":
        return cls(build_resolver(cfg["dns"]["nameservers"]))

    @defer.inlineCallbacks
    def mx_hosts(self, domain: str):
        name = to_ascii(domain)
        if name.startswith("[") and name.endswith("]"):  # address literal
            return [name[1:-1]]
        try:
            answers, _, _ = yield self.resolver.lookupMailExchange(name, timeout=TIMEOUTS)
        except error.DNSNameError:
            raise DNSPermanentError(f"domain {name} does not exist (NXDOMAIN)")
        except (error.DNSServerError, error.DNSQueryRefusedError, defer.TimeoutError,
                error.DNSQueryTimeoutError) as e:
            raise DNSTemporaryError(f"MX lookup for {name} failed: {type(e).__name__}")
        except error.DomainError:
            answers = []
        mx = [(r.payload.preference, str(r.payload.name).rstrip(".").lower())
              for r in answers if r.type == dns.MX]
        if mx:
            if any(host == "" for _, host in mx):
                if len(mx) == 1:
                    raise NullMX(f"domain {name} does not accept mail (null MX, RFC 7505)")
                mx = [m for m in mx if m[1]]
            random.shuffle(mx)
            mx.sort(key=lambda m: m[0])
            return [host for _, host in mx]
        # no MX: the domain itself is the implicit MX if it has an address
        addrs = yield self.addresses(name)
        if not addrs:
            raise DNSPermanentError(f"domain {name} has no MX and no address record")
        return [name]

    @defer.inlineCallbacks
    def addresses(self, host: str):
        """IPv4 then IPv6 addresses; [] when the name has none. Temporary errors propagate."""
        host = to_ascii(host)
        if _is_ip(host):
            return [host]
        out: list[str] = []
        temp: Exception | None = None
        for lookup, rtype in ((self.resolver.lookupAddress, dns.A),
                              (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield lookup(host, timeout=TIMEOUTS)
            except error.DNSNameError:
                break
            except error.DomainError:
                continue
            except Exception as e:  # timeout, SERVFAIL
                temp = e
                continue
            for r in answers:
                if r.type == rtype:
                    a = r.payload.dottedQuad() if rtype == dns.A else \
                        str(ipaddress.ip_address(r.payload.address))
                    if a not in out:
                        out.append(a)
        if not out and temp is not None:
            raise DNSTemporaryError(f"address lookup for {host} failed: {type(temp).__name__}")
        return out
