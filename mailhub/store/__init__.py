"""The mail store: Maildir++ trees per user; the only code that touches mail files."""
from mailhub.store.events import MailboxEvents
from mailhub.store.interfaces import FolderError, IMailStore, StoreError
from mailhub.store.maildir import Folder, MailStore, MessageInfo, MessageWriter

__all__ = [
    "MailboxEvents", "IMailStore", "StoreError", "FolderError",
    "MailStore", "Folder", "MessageInfo", "MessageWriter",
]
