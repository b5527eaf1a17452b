"""MailResolver's MX semantics on a stub twisted.names resolver (Deferreds fire at once, no
sockets): preference order, null MX, implicit MX, NXDOMAIN, temporary errors, AAAA."""
from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.names import dns, error

from mailhub.dns import DNSPermanentError, DNSTemporaryError, MailResolver, NullMX


class Stub:
    def __init__(self, zone: dict, broken: set = frozenset()):
        self.zone = zone
        self.broken = broken

    def _answer(self, name, rtype, payloads):
        if name in self.broken:
            return defer.fail(error.DNSServerError(name))
        if name not in self.zone:
            return defer.fail(error.DNSNameError(name))
        recs = [dns.RRHeader(name.encode(), t, dns.IN, 60, p)
                for t, p in self.zone[name] if t in (rtype, dns.CNAME)]
        return defer.succeed((recs, [], []))

    def lookupMailExchange(self, name, timeout=None):
        return self._answer(name, dns.MX, None)

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, dns.A, None)

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, dns.AAAA, None)


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


ZONE = {
    "multi.test": [(dns.MX, dns.Record_MX(30, b"c.mx.test")), (dns.MX, dns.Record_MX(10, b"a.mx.test")),
                   (dns.CNAME, dns.Record_CNAME(b"elsewhere.test")),
                   (dns.MX, dns.Record_MX(20, b"B.MX.test."))],
    "null.test": [(dns.MX, dns.Record_MX(0, b""))],
    "plain.test": [(dns.A, dns.Record_A("192.0.2.1"))],
    "empty.test": [],
    "dual.test": [(dns.A, dns.Record_A("192.0.2.7")), (dns.AAAA, dns.Record_AAAA("2001:db8::7"))],
}


def test_mx_in_preference_order_and_lower_case():
    r = MailResolver(Stub(ZONE))
    assert result(r.mx_hosts("Multi.Test.")) == ["a.mx.test", "b.mx.test", "c.mx.test"]


def test_null_mx_is_permanent():
    with pytest.raises(NullMX):
        result(MailResolver(Stub(ZONE)).mx_hosts("null.test"))


def test_implicit_mx_and_no_address():
    r = MailResolver(Stub(ZONE))
    assert result(r.mx_hosts("plain.test")) == ["plain.test"]
    with pytest.raises(DNSPermanentError):
        result(r.mx_hosts("empty.test"))
    with pytest.raises(DNSPermanentError, match="does not exist"):
        result(r.mx_hosts("nowhere.test"))


def test_servfail_is_temporary():
    with pytest.raises(DNSTemporaryError):
        result(MailResolver(Stub(ZONE, broken={"multi.test"})).mx_hosts("multi.test"))


def test_addresses_ipv4_then_ipv6_and_literals():
    r = MailResolver(Stub(ZONE))
    assert result(r.addresses("dual.test")) == ["192.0.2.7", "2001:db8::7"]
    assert result(r.addresses("192.0.2.9")) == ["192.0.2.9"]
    assert result(r.mx_hosts("[192.0.2.5]")) == ["192.0.2.5"]
