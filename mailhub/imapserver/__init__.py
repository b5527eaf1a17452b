"""IMAP4rev1 server (RFC 3501 + modern extensions) over the Maildir store; see docs/imap.md."""
