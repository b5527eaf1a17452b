"""Load-generating clients: a raw IMAP client (sync and asyncio), POP3 via poplib, and worker
processes that run many clients in parallel and report JSON."""
