"""mailhub: a complete mail server (MX, submission, outbound queue, MDA, POP3, IMAP) on Twisted."""

__version__ = "0.1.0"
