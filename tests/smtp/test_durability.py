"""Durability and memory: SIGKILL at random points never loses an acknowledged message nor
shows a partial one; a 50 MiB message streams through without growing the server's RSS."""
import random
import smtplib
import threading
import time

import pytest

from tests.conftest import MailhubEnv
from tests.smtp.conftest import SERVER_TOML, client, setup_env


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_kill9_never_loses_an_acknowledged_message(tmp_path, server_factory):
    env = setup_env(MailhubEnv(tmp_path / "k9", extra_toml=SERVER_TOML))
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    port = {"mx": None}
    rng = random.Random(1234)
    sizes = [rng.choice([10, 200, 3000, 20000]) for _ in range(64)]  # up to ~600 KB: spills

    def sender(n: int) -> None:
        i = 0
        while not stop.is_set():
            p = port["mx"]
            if p is None:
                time.sleep(0.02)
                continue
            try:
                s = smtplib.SMTP("127.0.0.1", p, timeout=5)
                s.ehlo("killer.example")
                while not stop.is_set():
                    token = f"t{n}-{i}"
                    i += 1
                    filler = "filler line of text for the kill test\r\n" * sizes[i % len(sizes)]
                    msg = f"Subject: {token}\r\n\r\n{filler}END {token}\r\n".encode()
                    s.sendmail("load@remote.example", ["alice@example.com"], msg)
                    with lock:
                        acked.add(token)  # only once the 250 came back
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)

    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 15
    kills = 0
    try:
        while time.monotonic() < deadline and kills < 5:
            server = server_factory(env).start()
            port["mx"] = server.port("mx")
            time.sleep(rng.uniform(0.3, 1.2))
            server.kill()
            port["mx"] = None
            kills += 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # restart once more: the server comes back over whatever the kills left
    server = server_factory(env).start()
    s = client(server)
    s.ehlo("check.example")
    assert s.sendmail("a@remote.example", ["alice@example.com"],
                      b"Subject: after\r\n\r\nEND after\r\n") == {}
    s.quit()
    server.stop()

    seen: dict[str, int] = {}
    for path in env.messages("alice@example.com"):
        data = path.read_bytes()
        subject = data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert data.endswith(f"END {subject}\r\n".encode()), f"partial message {path.name}"
        seen[subject] = seen.get(subject, 0) + 1
    assert kills >= 3 and len(acked) > 50, (kills, len(acked))
    lost = acked - set(seen)
    assert not lost, f"{len(lost)} acknowledged messages lost: {sorted(lost)[:5]}"
    dups = {k: v for k, v in seen.items() if v > 1}
    assert not dups, dups
    assert seen.get("after") == 1


@pytest.mark.slow
def test_50mib_message_is_streamed_not_held_in_memory(smtp_server, smtp_env):
    pid = smtp_server.proc.pid
    s = client(smtp_server, timeout=60)
    s.ehlo("big.example")
    # warm up the code paths (threads, imports) with a small and a spooled message
    s.sendmail("a@remote.example", ["bob@example.com"], b"Subject: warm\r\n\r\nx\r\n")
    s.sendmail("a@remote.example", ["bob@example.com"],
               b"Subject: warm2\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2000)
    before = vm_hwm_kib(pid)
    line = b"0123456789" * 7 + b"abcdef\r\n"  # 78 bytes
    n = (50 * 1024 * 1024 - 2048) // len(line)
    msg = b"Subject: big\r\n\r\n" + line * n
    assert s.sendmail("a@remote.example", ["alice@example.com"], msg) == {}
    after = vm_hwm_kib(pid)
    s.quit()
    [path] = smtp_env.messages("alice@example.com")
    assert path.stat().st_size > len(msg)
    with open(path, "rb") as f:
        f.seek(-len(line) * 2, 2)
        assert f.read() == line * 2
    assert after - before < 8 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB"
