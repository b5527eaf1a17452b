"""build_factory(ctx, listener_name): the protocol factory for the "imap" (143, STARTTLS) and
"imaps" (993, implicit TLS: service.py wraps it, so STARTTLS is not offered) listeners.

Both listeners share one IndexRegistry (kept in ``ctx.extras["imap_indexes"]``), so every
session of the process works on the same in-memory FolderIndex of a folder.
"""
from __future__ import annotations

from twisted.internet.protocol import Factory

from mailhub.imapserver.protocol import IMAPServerProtocol, Settings
from mailhub.store.index import IndexRegistry


class IMAPFactory(Factory):
    noisy = False  # the listener logs "listening: imap ..." already

    def __init__(self, ctx, listener_name: str):
        self.ctx = ctx
        self.listener_name = listener_name
        self.implicit_tls = listener_name == "imaps"
        self.settings = Settings(ctx.cfg)
        registry = ctx.extras.get("imap_indexes")
        if registry is None:
            registry = IndexRegistry(ctx.events)
            ctx.extras["imap_indexes"] = registry
            trigger = getattr(ctx.reactor, "addSystemEventTrigger", None)
            if trigger is not None:
                trigger("before", "shutdown", registry.save_all)
        self.registry = registry

    def buildProtocol(self, addr):
        p = IMAPServerProtocol(self.ctx, self.settings, self.implicit_tls, self.registry)
        p.factory = self
        return p


def build_factory(ctx, listener_name: str) -> IMAPFactory:
    return IMAPFactory(ctx, listener_name)
