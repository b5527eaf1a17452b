"""AuthThrottle: slow down and then refuse repeated authentication failures.

Keyed on the client IP and, separately, on the login name (Outlook's cloud connects from
Microsoft addresses, so IP alone would lock out a whole office, and login alone would let one
attacker lock out a user: both count). Each failure delays the reply by ``base_delay``
doubled per recent failure (capped), and after ``max_failures`` within ``window`` seconds the
key is refused until the window passes. Protocols call ``failure_delay`` after a failed
login and ``blocked`` before trying one.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque


class AuthThrottle:
    def __init__(self, base_delay: float = 1.0, max_delay: float = 10.0,
                 max_failures: int = 10, window: float = 600.0, clock=time.monotonic):
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._fails: dict[str, deque] = defaultdict(deque)

    def _recent(self, key: str) -> int:
        q = self._fails.get(key)
        if not q:
            return 0
        cutoff = self._clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            self._fails.pop(key, None)
            return 0
        return len(q)

    def blocked(self, ip: str, login: str | None = None) -> bool:
        """True when this IP (or this login from anywhere) failed too often lately."""
        if self._recent(f"ip:{ip}") >= self.max_failures:
            return True
        # a login is blocked only at a higher count, so an attacker cannot cheaply lock out
        # the real user who connects from another address
        return bool(login) and self._recent(f"user:{login.lower()}") >= 3 * self.max_failures

    def failure(self, ip: str, login: str | None = None) -> float:
        """Record a failure; returns how long to wait before answering it."""
        now = self._clock()
        self._fails[f"ip:{ip}"].append(now)
        if login:
            self._fails[f"user:{login.lower()}"].append(now)
        n = self._recent(f"ip:{ip}")
        if self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * (2 ** max(0, n - 1)))

    def success(self, ip: str, login: str | None = None) -> None:
        self._fails.pop(f"ip:{ip}", None)
