"""DNS for mailhub: MX/A/AAAA lookups on twisted.names, honouring ``[dns] nameservers``."""
from mailhub.dns.resolver import (  # noqa: F401
    DNSPermanentError, DNSTemporaryError, MailResolver, NullMX, build_resolver, parse_nameserver,
)
