"""twistd plugin: ``twistd -n mailhub [--config PATH]`` runs the whole mail server.

Kept tiny on purpose: Twisted imports every plugin module when it scans for plugins, so the
real work (config, services) is imported only when the ``mailhub`` plugin is actually used.
"""
from twisted.application.service import ServiceMaker

mailhub = ServiceMaker(
    "mailhub",
    "mailhub.tap",
    "mailhub mail server: SMTP (MX, submission), outbound queue, POP3 and IMAP",
    "mailhub",
)
