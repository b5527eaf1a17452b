"""bench: one harness that measures mailhub side by side with Postfix and Dovecot.

Run ``python -m bench [--quick] [--only smtp,queue,pop3,imap,idle]`` from the repository root.
See docs/bench.md for what each scenario measures and how the peers are configured.
"""
