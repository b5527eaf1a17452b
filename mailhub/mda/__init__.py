"""Local delivery (the MDA): resolved local recipients -> one Maildir copy each, via the store."""
from mailhub.mda.deliver import DeliveryAgent

__all__ = ["DeliveryAgent"]
