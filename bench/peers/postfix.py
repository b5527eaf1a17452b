"""A private Postfix instance: its own config, queue and data dirs under a temp dir.

``postfix -c <confdir>`` with main.cf/master.cf written here: an smtpd on 127.0.0.1:<port>,
the virtual(8) delivery agent writing Maildir (Postfix fsyncs the file before the rename, the
same durability as mailhub), optional relay of a domain to an smtp-sink via a transport map,
logging to a file through postlogd. The system's /etc/postfix is never read or written (the
commands get the instance's config dir, and MAIL_CONFIG is set for the helpers they run).
"""
from __future__ import annotations

import os
import pwd
import grp
import shutil
import subprocess
import time
from pathlib import Path

from bench import procs

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One Postfix instance rooted at ``root``; mail for ``domain`` goes to ``mail_base``."""

    def __init__(self, root: Path, port: int, domain: str, users: list[str],
                 mail_base: Path, relay: dict[str, int] | None = None,
                 hold_smtpd: bool = False, mail_user: str = "mail"):
        self.root = Path(root)
        self.conf = self.root / "etc"
        self.queue = self.root / "spool"
        self.data = self.root / "lib"
        self.log_path = self.root / "postfix.log"
        self.port = port
        self.domain = domain
        self.users = users
        self.mail_base = Path(mail_base)
        self.relay = relay or {}
        self.hold_smtpd = hold_smtpd
        self.uid = pwd.getpwnam(mail_user).pw_uid
        self.gid = grp.getgrnam(mail_user).gr_gid
        procs.register_root(self.root)

    # -- config -----------------------------------------------------------------------
    def write_config(self) -> None:
        for d in (self.conf, self.queue, self.data, self.mail_base):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail_base, self.uid, self.gid)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data, pf.pw_uid, pf.pw_gid)
        for d in (self.root, self.conf, self.queue):
            os.chmod(d, 0o755)
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (self.conf / "dynamicmaps.cf").write_text("")
        vmailbox = "".join(f"{u}@{self.domain} {self.domain}/{u}/\n" for u in self.users)
        (self.conf / "vmailbox").write_text(vmailbox)
        transport = "".join(f"{dom} smtp:[127.0.0.1]:{port}\n" for dom, port in self.relay.items())
        (self.conf / "transport").write_text(transport)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.example",
            "mydomain": "bench.example",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "no",
            "message_size_limit": str(50 * 1024 * 1024),
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail_base),
            "virtual_mailbox_maps": f"texthash:{self.conf / 'vmailbox'}",
            "virtual_minimum_uid": str(min(self.uid, 100)),
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "virtual_mailbox_limit": "0",
            "transport_maps": f"texthash:{self.conf / 'transport'}",
            "relayhost": "",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_address_preference": "ipv4",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",  # read-only: postfix-script, postfix-files
            "daemon_directory": "/usr/lib/postfix/sbin",
            "command_directory": "/usr/sbin",
        }
        if self.hold_smtpd:
            # loading phase of the relay scenario: everything accepted goes to the hold queue
            main["smtpd_end_of_data_restrictions"] = "check_client_access static:HOLD"
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))

    def set(self, **params: str) -> None:
        """postconf -e on this instance's main.cf."""
        self.cmd(["postconf", "-c", str(self.conf), "-e",
                  *[f"{k}={v}" for k, v in params.items()]])

    def env(self) -> dict:
        env = dict(os.environ)
        env["MAIL_CONFIG"] = str(self.conf)
        return env

    def cmd(self, args: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        return p

    # -- lifecycle --------------------------------------------------------------------
    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if procs.alive(pid) else None

    def start(self, timeout: float = 30) -> None:
        for attempt in range(3):
            p = self.cmd(["postfix", "-c", str(self.conf), "start"], check=False, timeout=timeout)
            if p.returncode == 0:
                break
            if attempt < 2 and "Address already in use" in self.log():
                # the free port was taken between free_port() and master's bind: take another
                self.port = procs.free_port()
                (self.conf / "master.cf").write_text(
                    MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
                continue
            raise RuntimeError(f"postfix start failed ({p.returncode}):\n{p.stdout}{p.stderr}"
                               f"{self.log()[-1500:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.master_pid()
            if pid:
                procs.register(pid, group=True)
                if _port_open(self.port):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not start:\n{self.log()}")

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        self.cmd(["postfix", "-c", str(self.conf), "stop"], check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and procs.alive(pid):
            time.sleep(0.1)
        if procs.alive(pid):
            procs.stop_pid(pid, group=True)
        # children exit when master goes; wait for them (they hold our dirs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and procs.owned_pids_under(self.root):
            time.sleep(0.1)

    def reload(self) -> None:
        self.cmd(["postfix", "-c", str(self.conf), "reload"])

    def flush(self) -> None:
        self.cmd(["postqueue", "-c", str(self.conf), "-f"])

    def release_held(self) -> None:
        self.cmd(["postsuper", "-c", str(self.conf), "-H", "ALL"])

    def queue_count(self, sub: str) -> int:
        d = self.queue / sub
        return sum(len(files) for _, _, files in os.walk(d)) if d.exists() else 0

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def pid(self) -> int | None:
        return self.master_pid()


def _port_open(port: int) -> bool:
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
