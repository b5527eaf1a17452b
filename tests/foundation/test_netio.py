"""netio.write_now: a reply on an idle plain TCP transport leaves at once (nothing is left
for the reactor to send), and behind a backlog it is queued after it, so bytes never change
order. Real sockets on 127.0.0.1, a real reactor in a child process."""
import json
import subprocess
import sys

from tests.conftest import subprocess_env

SCRIPT = r"""
import json, socket, threading
from twisted.internet import reactor, protocol
from mailhub.netio import write_now, can_write_now

out = {}
BIG = b"B" * (8 * 1024 * 1024)  # far more than a loopback socket buffer takes at once

class Server(protocol.Protocol):
    def dataReceived(self, data):
        t = self.transport
        out["can_write_now"] = can_write_now(t)
        if data.startswith(b"small"):
            write_now(t, b"reply-1\r\n")
            out["queued_after_small"] = t._tempDataLen + len(t.dataBuffer) - t.offset
        elif data.startswith(b"big"):
            write_now(t, BIG)          # the socket takes part of it; the rest is queued
            out["queued_after_big"] = t._tempDataLen + len(t.dataBuffer) - t.offset > 0
            write_now(t, b"END\r\n")   # must come after all of BIG

f = protocol.Factory.forProtocol(Server)
port = reactor.listenTCP(0, f, interface="127.0.0.1")

def client():
    s = socket.create_connection(("127.0.0.1", port.getHost().port))
    s.sendall(b"small\r\n")
    out["small_reply"] = s.recv(100).decode()
    s.sendall(b"big\r\n")
    got = bytearray()
    while not got.endswith(b"END\r\n") and len(got) < len(BIG) + 5:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    out["big_len"] = len(got)
    out["big_order_ok"] = bytes(got) == BIG + b"END\r\n"
    s.close()
    reactor.callFromThread(reactor.stop)

reactor.callWhenRunning(lambda: threading.Thread(target=client, daemon=True).start())
reactor.callLater(60, reactor.stop)
reactor.run()
print(json.dumps(out))
"""


def test_write_now_sends_at_once_and_keeps_order():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=subprocess_env(), timeout=90)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["can_write_now"] is True
    assert out["small_reply"] == "reply-1\r\n"
    assert out["queued_after_small"] == 0  # went straight to the socket
    assert out["queued_after_big"] is True  # the backlog case was really exercised
    assert out["big_len"] == 8 * 1024 * 1024 + 5
    assert out["big_order_ok"] is True
