"""The shared checker: Argon2 off the reactor thread, identical concurrent logins share one
run, a burst of logins does not leave Argon2's memory behind, wrong passwords fail."""
import json
import subprocess
import sys

from tests.conftest import subprocess_env

SCRIPT = r"""
import json, sys, resource
from twisted.internet import reactor, defer
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
import mailhub.auth.portal as portal
from mailhub.directory.sqlite import SQLiteDirectory
from mailhub.store import MailStore

d = SQLiteDirectory(sys.argv[1] + "/dir.sqlite3")
d.add_domain("example.com")
for i in range(8):
    d.add_user(f"u{i}@example.com", f"pw{i}")
runs = []
real_verify = portal.verify_password
def counting(stored, pw):
    runs.append(pw)
    return real_verify(stored, pw)
portal.verify_password = counting

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

out = {}
@defer.inlineCallbacks
def main():
    p, _realm = portal.build_portal(MailStore(sys.argv[1] + "/mail"), d)
    from mailhub.auth.portal import IMailUser
    # 1. twenty identical logins at once: one Argon2 run
    res = yield defer.gatherResults([p.login(UsernamePassword(b"u0@example.com", b"pw0"), None, IMailUser)
                                     for _ in range(20)])
    out["same_ok"] = sorted({r[1].address for r in res})
    out["same_runs"] = len(runs)
    # 2. wrong password: refused
    try:
        yield p.login(UsernamePassword(b"u1@example.com", b"nope"), None, IMailUser)
        out["wrong"] = "accepted"
    except UnauthorizedLogin:
        out["wrong"] = "refused"
    # 3. bursts of distinct logins: memory comes back
    checker = p.checkers[list(p.checkers)[0]]
    out["threads"] = checker.argon2_threads
    base = rss_mb()
    after = []
    for _round in range(3):
        yield defer.gatherResults([p.login(UsernamePassword(f"u{i}@example.com".encode(), f"pw{i}".encode()),
                                           None, IMailUser) for i in range(1, 8)])
        checker._cache.clear()
        after.append(rss_mb())
    out["rss_growth_mb"] = after[0] - base
    out["rss_growth_later_mb"] = after[-1] - after[0]
    out["runs_total"] = len(runs)
    # 4. the warm-up runs once per thread and verifies nothing
    n = len(runs)
    import time as _t
    t0 = _t.monotonic()
    checker.warm_up()  # blocks until every checker thread ran Argon2 once
    out["warm_up_s"] = _t.monotonic() - t0
    out["warm_up_verifications"] = len(runs) - n
    reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
print(json.dumps(out))
"""


def test_checker_shares_runs_and_returns_memory(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same_ok"] == ["u0@example.com"]
    assert out["same_runs"] == 1
    assert out["wrong"] == "refused"
    assert out["runs_total"] == 1 + 1 + 21
    # Argon2's 19 MiB per run goes back to the system: seven logins at once, three times,
    # leave neither seven blocks nor a growing heap behind
    assert out["rss_growth_mb"] < 25, out
    assert out["rss_growth_later_mb"] < 5, out
    assert out["warm_up_verifications"] == 0
    assert 0.005 < out["warm_up_s"] < 5, out  # it did run Argon2, and waited for it
