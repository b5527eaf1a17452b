"""POP3 server (RFC 1939, 2449, 2595, 5034): STLS on the ``pop3`` listener, implicit TLS on
``pop3s``, reading each user's INBOX through the store. See docs/pop3.md.

Modules: ``wire`` (sans-IO line splitting, command parsing, dot-stuffing, SASL PLAIN),
``maildrop`` (the snapshot taken at login and the one-session-per-mailbox lock),
``sender`` (streams a large message from disk as a pull producer), ``protocol`` (the
session state machine) and ``factory`` (``build_factory(ctx, listener_name)``).
"""
