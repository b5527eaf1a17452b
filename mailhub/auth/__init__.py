"""Authentication: the one twisted.cred Portal (realm + checker) shared by SMTP, POP3, IMAP."""
from mailhub.auth.portal import DirectoryChecker, IMailUser, MailRealm, MailUser, build_portal
from mailhub.auth.throttle import AuthThrottle

__all__ = ["DirectoryChecker", "IMailUser", "MailRealm", "MailUser", "build_portal", "AuthThrottle"]
