"""IMailStore: the store's boundary, used by the MDA, POP3 and IMAP (never the reverse)."""
from zope.interface import Attribute, Interface


class StoreError(Exception):
    """A store operation failed (disk full, I/O error); callers answer with a temporary error."""


class FolderError(StoreError):
    """A folder name is invalid, missing, or already exists; the message says which."""


class IMailStore(Interface):
    root = Attribute("the directory holding every user's Maildir++ tree")
    events = Attribute("the MailboxEvents hub notified after every change")

    def create_user(address):
        """Create the user's Maildir++ tree: INBOX and Sent, Drafts, Trash, Junk, Archive."""

    def remove_user(address, purge=False):
        """Forget a user's mail tree; their mail is kept on disk unless purge is true."""

    def has_user(address):
        """True if the user's tree exists on disk."""

    def list_folders(address):
        """Folder names (Unicode, "." delimiter), INBOX first."""

    def folder(address, name):
        """The Folder object for a name; FolderError if it does not exist."""

    def create_folder(address, name):
        """Create a folder (and its missing parents)."""

    def delete_folder(address, name):
        """Delete a folder and its messages (not INBOX)."""

    def rename_folder(address, old, new):
        """Rename a folder and its children (INBOX: move its messages to a new folder)."""

    def new_message(address, folder="INBOX"):
        """A MessageWriter on a fresh tmp/ file of that folder."""

    def commit(writers):
        """Durably publish writers: fsync each file, rename into new/ (or cur/ with flags),
        fsync the directories; a Deferred firing with the list of message keys once all is on
        disk, after notifying MailboxEvents. Concurrent commits are batched (group commit)."""
