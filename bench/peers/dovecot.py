"""A private Dovecot instance (IMAP + POP3) on 127.0.0.1 high ports, config under a temp dir.

``dovecot -F -c <conf>``: base_dir, state and logs under the temp dir, a passwd-file
userdb/passdb with ``{ARGON2ID}`` hashes made with mailhub's own hasher (same Argon2id
parameters as mailhub's directory) and Dovecot's auth cache on (10M, 5 min, mailhub's cache
TTL), hash verification in auth-worker processes (all cores, like mailhub's thread pool);
``mail_location = maildir:<mail>/%d/%n`` (Maildir++ with
INBOX at the root: the layout mailhub writes, so a copy of mailhub's tree is served as is),
mail owned by the system's ``mail`` user (Dovecot refuses uid 0 for mail access). Limits are
raised so that connection counts, not Dovecot's defaults, decide (process_limit,
mail_max_userip_connections); hibernation of IDLE clients can be enabled for the IDLE scenario.
"""
from __future__ import annotations

import grp
import os
import pwd
import resource
import subprocess
import time
from pathlib import Path

from bench import procs


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return max(soft, target)


INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"


def raise_inotify_instances(want: int) -> None:
    """Dovecot's IDLE (and imap-hibernate) need one inotify instance per session; the kernel's
    default of 128 per user would make it fall back to polling. Raised for the run, restored
    by procs.cleanup_all (a runtime sysctl, not a file in /etc)."""
    try:
        old = int(open(INOTIFY_INSTANCES).read())
    except (OSError, ValueError):
        return
    if old >= want:
        return
    try:
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write(str(want))
    except OSError:
        return

    def restore():
        with open(INOTIFY_INSTANCES, "w") as f:
            f.write(str(old))
    procs.on_cleanup(restore)


PREFERRED_SCHEMES = ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT")


def password_schemes() -> list[str]:
    """Schemes this Dovecot build supports (``doveadm pw -l``)."""
    try:
        out = subprocess.run(["doveadm", "pw", "-l"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return out.split()


def pick_scheme(available: list[str]) -> str:
    """ARGON2ID (what mailhub stores) when this Dovecot has it, else the strongest of the
    others; PLAIN when none of them is listed (or ``doveadm pw -l`` failed)."""
    for s in PREFERRED_SCHEMES:
        if s in available:
            return s
    return "PLAIN"


def hash_for_dovecot(scheme: str, password: str) -> str:
    """The passwd-file password field: ``{ARGON2ID}`` + the PHC string from mailhub's own
    hasher (libsodium via PyNaCl, mailhub's parameters), so both servers run the same Argon2id
    cost per verification; other schemes through ``doveadm pw``."""
    if scheme == "ARGON2ID":
        from mailhub.directory.passwords import hash_password
        return "{ARGON2ID}" + hash_password(password)
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    out = subprocess.run(["doveadm", "pw", "-s", scheme, "-p", password], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    return out


class Dovecot:
    def __init__(self, root: Path, mail_base: Path, users: dict[str, str],
                 imap_port: int, pop3_port: int, hibernate: bool = False,
                 max_clients: int = 2000, mail_user: str = "mail", scheme: str | None = None):
        self.root = Path(root)
        self.mail_base = Path(mail_base)
        self.users = users  # address -> password
        self.scheme = scheme or pick_scheme(password_schemes())
        self.imap_port = imap_port
        self.pop3_port = pop3_port
        self.hibernate = hibernate
        self.max_clients = max_clients
        self.uid = pwd.getpwnam(mail_user).pw_uid
        self.gid = grp.getgrnam(mail_user).gr_gid
        self.conf = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.proc: subprocess.Popen | None = None
        procs.register_root(self.root)

    def write_config(self) -> None:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        passwd = "".join(
            f"{addr}:{hash_for_dovecot(self.scheme, pw)}:{self.uid}:{self.gid}::{self.mail_base}/{addr.split('@')[1]}/{addr.split('@')[0]}::\n"
            for addr, pw in self.users.items())
        (self.root / "passwd").write_text(passwd)
        n = self.max_clients + 100
        hib = ""
        if self.hibernate:
            hib = f"""
imap_hibernate_timeout = 1s
service imap-hibernate {{
  client_limit = {n}
  unix_listener imap-hibernate {{
    mode = 0660
    user = {pwd.getpwuid(self.uid).pw_name}
  }}
}}
service imap {{
  unix_listener imap-master {{
    user = $default_internal_user
  }}
  process_limit = {n}
}}
"""
        else:
            hib = f"""
service imap {{
  process_limit = {n}
}}
"""
        conf = f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
instance_name = mhbench-{self.imap_port}
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {min(self.uid, 100)}
first_valid_gid = {min(self.gid, 100)}
mail_location = maildir:{self.mail_base}/%d/%n
mail_max_userip_connections = {n}
default_process_limit = {n}
default_client_limit = {4 * n}
default_vsz_limit = 1G
pop3_uidl_format = %08Xu%08Xv
mail_fsync = optimized
auth_cache_size = 10M
auth_cache_ttl = 5 min
auth_cache_verify_password_with_worker = yes
passdb {{
  driver = passwd-file
  args = scheme={self.scheme} username_format=%u {self.root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = {n}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = {n}
}}
service pop3 {{
  process_limit = {n}
}}
service auth {{
  client_limit = {4 * n}
}}
service anvil {{
  client_limit = {4 * n}
}}
{hib}
"""
        self.conf.write_text(conf)

    def start(self, timeout: float = 30) -> None:
        raise_inotify_instances(self.max_clients + 256)
        def raise_limits():
            raise_nofile(65536)

        self._log = open(self.root / "dovecot.stdout", "ab")
        self.proc = procs.popen(["dovecot", "-F", "-c", str(self.conf)], stdout=self._log,
                                stderr=subprocess.STDOUT, preexec_fn=raise_limits)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited {self.proc.returncode}:\n{self.log()}")
            if procs.port_open(self.imap_port) and procs.port_open(self.pop3_port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"dovecot did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        procs.stop_pid(self.proc.pid, group=False, timeout=15)
        self.proc.wait(5)
        self._log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and procs.owned_pids_under(self.root):
            time.sleep(0.1)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def log(self) -> str:
        out = ""
        for p in (self.log_path, self.root / "dovecot.stdout"):
            try:
                out += p.read_text(errors="replace")[-4000:]
            except OSError:
                pass
        return out
