"""IOutboundQueue: how SMTP submission (and forwarding aliases) hand mail to the queue."""
from zope.interface import Interface


class IOutboundQueue(Interface):
    def enqueue(sender, recipients, message_path, dkim_domain=None):
        """Take ownership of the message file at ``message_path`` (on the data dir's file
        system; the queue moves it), record the envelope (sender, per-recipient state) and
        fsync both. Fires with the queue id once durable; the caller answers 250 only then.
        ``dkim_domain``: sign with that domain's key (mail submitted by our users)."""

    def flush():
        """Retry every queued message now."""

    def remove(queue_id):
        """Drop a queued message; KeyError if there is none with that id."""
