"""Install the peers (Debian's postfix, dovecot-imapd, dovecot-pop3d) without starting them.

apt-get would start system services on ports 25/110/143...: during the install a temporary
/usr/sbin/policy-rc.d that exits 101 forbids that (removed afterwards; an existing one is left
as it is), and debconf is told "No configuration" for Postfix, so /etc/postfix/main.cf is not
written. A system instance already running is left alone; the harness never uses it.
"""
from __future__ import annotations

import os
import shutil
import subprocess

PACKAGES = ["postfix", "dovecot-imapd", "dovecot-pop3d"]
TOOLS = ["smtp-source", "smtp-sink", "postfix", "postconf", "postsuper", "dovecot"]
POLICY = "/usr/sbin/policy-rc.d"


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]


def missing_packages() -> list[str]:
    out = []
    for pkg in PACKAGES:
        p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in p.stdout:
            out.append(pkg)
    return out


def ensure_peers() -> None:
    need = missing_packages()
    if not need:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: need {need}; run as root or install them: apt-get install {' '.join(need)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input=(
        "postfix postfix/main_mailer_type select No configuration\n"
        "postfix postfix/mailname string localhost\n"), text=True, check=True)
    created_policy = False
    if not os.path.exists(POLICY):
        with open(POLICY, "w") as f:
            f.write("#!/bin/sh\n# temporary, from mailhub's bench: no service starts\nexit 101\n")
        os.chmod(POLICY, 0o755)
        created_policy = True
    try:
        print(f"bench: apt-get install {' '.join(need)} (services kept stopped)", flush=True)
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *need],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        if created_policy:
            os.unlink(POLICY)
