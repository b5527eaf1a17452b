"""The peers mailhub is measured against: Postfix, Dovecot, smtp-sink; and mailhub itself."""
