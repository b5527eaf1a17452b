"""DKIM: per-domain signing keys under ``<data_dir>/dkim/`` and signing with dkimpy."""
from mailhub.dkim.keys import DKIMKeys, DKIMSigner  # noqa: F401
