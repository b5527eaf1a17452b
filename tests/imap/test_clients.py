"""Real third-party clients: isync's mbsync syncing both ways (plain and implicit TLS), and
curl's imap:// and imaps:// (list, fetch, append)."""
import re
import shutil
import subprocess
import time

import pytest

from tests.imap.conftest import ALICE, make_message, unique

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None and shutil.which("curl") is None,
                                reason="mbsync/curl not installed")


def mbsync_config(tmp_path, port, tls, cert, folder_pattern):
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    ssl = (f"SSLType IMAPS\nCertificateFile {cert}\n" if tls else "SSLType None\n")
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(f"""
IMAPAccount mh
Host 127.0.0.1
Port {port}
User {ALICE[0]}
Pass {ALICE[1]}
{ssl}AuthMechs LOGIN PLAIN
Timeout 30

IMAPStore mh-remote
Account mh

MaildirStore mh-local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel mh
Far :mh-remote:
Near :mh-local:
Patterns {folder_pattern}
Create Both
Expunge Both
SyncState *
""")
    return cfg, local


def run_mbsync(cfg):
    p = subprocess.run(["mbsync", "-c", str(cfg), "-a"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def local_files(local, folder):
    d = local / folder
    return sorted(p for sub in ("cur", "new") for p in (d / sub).iterdir())


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="mbsync not installed")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "imaps"])
def test_mbsync_both_ways(imap_server, tmp_path, tls):
    name = unique("Sync")
    c = imap_server.client()
    c.create_folder(name)
    c.append(name, make_message("server one"))
    c.append(name, make_message("server two"), flags=[b"\\Flagged"])
    cert = imap_server.env.data_dir / "tls" / "selfsigned-cert.pem"
    port = imap_server.tls_port if tls else imap_server.port
    cfg, local = mbsync_config(tmp_path, port, tls, cert, name)
    run_mbsync(cfg)
    files = local_files(local, name)
    assert len(files) == 2
    assert any(f.name.endswith(",F") or ":2,F" in f.name for f in files)
    assert b"server one" in b"".join(f.read_bytes() for f in files)
    # local -> server: a new message, a flag change, a deletion
    new = local / name / "new" / f"{int(time.time())}.local1.host"
    new.write_bytes(make_message("from local"))
    victim = [f for f in files if b"server one" in f.read_bytes()][0]
    victim.rename(victim.with_name(victim.name.split(":2,")[0] + ":2,ST"))
    run_mbsync(cfg)
    c.select_folder(name)
    msgs = c.fetch(c.search(), ["ENVELOPE", "FLAGS"])
    subjects = sorted(v[b"ENVELOPE"].subject for v in msgs.values())
    assert subjects == [b"from local", b"server two"]
    # server -> local again: a flag set over IMAP reaches the local copy
    uid = [u for u, v in msgs.items() if v[b"ENVELOPE"].subject == b"from local"][0]
    c.add_flags([uid], [b"\\Answered"])
    run_mbsync(cfg)
    files = local_files(local, name)
    assert len(files) == 2
    local_copy = [f for f in files if b"from local" in f.read_bytes()][0]
    assert "R" in local_copy.name.split(":2,")[1]
    c.logout()


def curl(*args):
    p = subprocess.run(["curl", "-s", "-S", "--max-time", "30", *args], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_imap_and_imaps(imap_server, tmp_path):
    name = unique("Curl")
    c = imap_server.client()
    c.create_folder(name)
    c.append(name, make_message("curl me", body="curl body text\r\n"))
    user = f"{ALICE[0]}:{ALICE[1]}"
    listing = curl("-u", user, f"imap://127.0.0.1:{imap_server.port}/")
    assert b'"INBOX"' in listing and name.encode() in listing
    msg = curl("-u", user, f"imap://127.0.0.1:{imap_server.port}/{name};UID=1")
    assert b"curl body text" in msg and b"Subject: curl me" in msg
    # implicit TLS
    msg = curl("-k", "-u", user, f"imaps://127.0.0.1:{imap_server.tls_port}/{name};UID=1;SECTION=TEXT")
    assert msg.strip() == b"curl body text"
    # STARTTLS required by the client
    msg = curl("-k", "--ssl-reqd", "-u", user, f"imap://127.0.0.1:{imap_server.port}/{name};UID=1")
    assert b"curl body text" in msg
    # custom request (SEARCH) and upload (APPEND)
    out = curl("-u", user, "-X", "SEARCH SUBJECT curl", f"imap://127.0.0.1:{imap_server.port}/{name}")
    assert re.search(rb"\* SEARCH 1\b", out)
    up = tmp_path / "up.eml"
    up.write_bytes(make_message("uploaded"))
    curl("-u", user, "-T", str(up), f"imap://127.0.0.1:{imap_server.port}/{name}")
    assert c.folder_status(name, ["MESSAGES"])[b"MESSAGES"] == 2
    c.logout()
