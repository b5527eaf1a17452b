"""IDirectory: what the rest of mailhub may ask of the directory (any backend)."""
from zope.interface import Attribute, Interface


class DirectoryError(Exception):
    """A directory operation refused; the message is fit to show to an administrator."""


class IDirectory(Interface):
    """Domains, users (with Argon2id password hashes) and aliases.

    Addresses passed in may be in any case and use Unicode domains; the directory normalises
    them (lower-case IDNA domain, local part kept as given except that it is matched
    case-insensitively). A backend must see changes made by other processes (the CLI) at once.
    """

    path = Attribute("where the data lives, for messages")

    def add_domain(name):
        """Add a served domain; DirectoryError if present or malformed. Returns the IDNA name."""

    def remove_domain(name):
        """Remove a domain; refused while it still has users or aliases."""

    def list_domains():
        """Sorted list of served domain names (IDNA form)."""

    def has_domain(name):
        """True if the domain (any case, Unicode or IDNA) is served."""

    def add_user(address, password):
        """Add a user; DirectoryError for a duplicate, an unserved domain or an empty password."""

    def set_password(address, password):
        """Change a user's password."""

    def remove_user(address):
        """Remove a user (not their mail: the store decides that)."""

    def list_users():
        """Sorted list of user addresses."""

    def user_exists(address):
        """True if the address is exactly a user (no alias resolution)."""

    def check_password(address, password):
        """Return the canonical user address if the password is right, else None. Blocking."""

    def add_alias(source, targets):
        """Map source (an address or ``@domain`` catch-all) to one or more target addresses."""

    def remove_alias(source):
        """Remove an alias."""

    def list_aliases():
        """Sorted list of (source, [targets])."""

    def resolve(address):
        """The final recipients of an address: a list of (kind, address) with kind "local" for
        one of our users and "remote" for a forward to another domain. Empty list when the
        address does not exist. Aliases are followed (with loop protection), then catch-alls,
        then subaddresses ``user+tag@``."""

    def senders_for(user):
        """The addresses a user may use as MAIL FROM: their own and aliases resolving to them."""
