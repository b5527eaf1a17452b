"""The shared twisted.cred Portal: DirectoryChecker (Argon2id via the directory) + MailRealm.

The checker verifies passwords on its own threads, one per core, started and exercised once
at server start (Argon2 is deliberately slow); it keeps a small
cache of recent successful verifications keyed on a salted digest of the password and the
stored hash, as Dovecot's auth cache does, so a client opening five connections costs one
Argon2 run. A password change replaces the stored hash, which invalidates the cache entry.

The realm hands out avatars per interface: IMailUser (address, store) always; protocol
packages register their own interfaces (e.g. twisted.mail's IMessageDelivery, IMailbox,
IAccount) with ``MailRealm.register(interface, factory)`` when the service is built.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from typing import Any, Callable

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.python import failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from mailhub.directory.interfaces import IDirectory
from mailhub.directory.passwords import hash_password, verify_password

_MALLOC_DONE = False


def return_big_allocations_to_the_system() -> None:
    """Make glibc serve large blocks (over 1 MiB) with mmap every time, so they go back to
    the system when freed. Without this glibc's dynamic threshold grows with every large
    free and soon serves such blocks from per-thread heaps that keep the memory, in a
    process that must hold 10,000 IDLE clients in little memory. (Argon2's 19 MiB comes from
    libsodium's own mmap and is returned after each run anyway.)"""
    global _MALLOC_DONE
    if _MALLOC_DONE:
        return
    _MALLOC_DONE = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)  # fixed: disables the dynamic threshold
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class IMailUser(Interface):
    address = Attribute("the user's canonical address")
    store = Attribute("the IMailStore holding their mail")


@implementer(IMailUser)
class MailUser:
    def __init__(self, address: str, store: Any, directory: Any):
        self.address = address
        self.store = store
        self.directory = directory

    def __repr__(self) -> str:
        return f"<MailUser {self.address}>"


@implementer(ICredentialsChecker)
class DirectoryChecker:
    credentialInterfaces = (credentials.IUsernamePassword,)
    CACHE_TTL = 300.0
    CACHE_MAX = 10000

    def __init__(self, directory: IDirectory, threaded: bool = True):
        self.directory = directory
        self.threaded = threaded
        self._secret = os.urandom(32)
        self._cache: dict[bytes, tuple[str, float]] = {}
        self._inflight: dict[bytes, list[defer.Deferred]] = {}
        # Argon2 costs 19 MiB and a core per run: it runs on this checker's own threads, one
        # per core (a burst of logins queues instead of multiplying memory and starving the
        # reactor thread)
        self.argon2_threads = max(1, os.cpu_count() or 1)
        self._pool: ThreadPool | None = None

    def _argon2_pool(self) -> ThreadPool:
        if self._pool is None:
            from twisted.internet import reactor
            self._pool = ThreadPool(minthreads=0, maxthreads=self.argon2_threads,
                                    name="mailhub-argon2")
            self._pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return self._pool

    def _run_argon2(self, f, *args) -> defer.Deferred:
        from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, self._argon2_pool(), f, *args)

    def warm_up(self, timeout: float = 10.0) -> None:
        """Run Argon2 once on each of the checker's threads and wait for them (called at
        server start, before the reactor serves anyone), so the first logins after a
        restart do not pay for starting the threads and libsodium's first run, nor wait
        behind the warm-up. Never fails; gives up waiting after ``timeout``."""
        if not self.threaded:
            return
        secret = os.urandom(16).hex()
        pool = self._argon2_pool()
        done = [threading.Event() for _ in range(self.argon2_threads)]
        started = threading.Barrier(self.argon2_threads, timeout=timeout)

        def run(event):
            try:
                started.wait()  # all at once: each on its own thread
            except threading.BrokenBarrierError:
                pass
            try:
                hash_password(secret)
            finally:
                event.set()

        for event in done:
            pool.callInThread(run, event)
        deadline = time.monotonic() + timeout
        for event in done:
            event.wait(max(0.0, deadline - time.monotonic()))

    def _digest(self, address: str, stored_hash: str, password: str) -> bytes:
        msg = "\x00".join((address, stored_hash, password)).encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def requestAvatarId(self, creds):
        try:
            username = creds.username
            password = creds.password
            if isinstance(username, bytes):
                username = username.decode("utf-8")
            if isinstance(password, bytes):
                password = password.decode("utf-8")
        except UnicodeDecodeError:
            return defer.fail(error.UnauthorizedLogin("bad encoding"))
        found = self.directory.password_hash(username)
        if found is None or not password:
            # no Argon2 run here: the protocols delay every failure reply alike (AuthThrottle),
            # so a missing user is not told apart by timing
            return defer.fail(error.UnauthorizedLogin("invalid credentials"))
        address, stored = found
        digest = self._digest(address, stored, password)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self.CACHE_TTL:
            return defer.succeed(address)

        waiting = self._inflight.get(digest)
        if waiting is not None:  # the same login is being verified: share that run
            d = defer.Deferred()
            waiting.append(d)
            return d

        def checked(ok: bool):
            if not ok:
                raise error.UnauthorizedLogin("invalid credentials")
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (address, time.monotonic())
            return address

        def share(result):
            for other in self._inflight.pop(digest, []):
                if isinstance(result, failure.Failure):
                    other.errback(result.value)
                else:
                    other.callback(result)
            return result

        self._inflight[digest] = []
        if self.threaded:
            d = self._run_argon2(verify_password, stored, password)
        else:
            d = defer.maybeDeferred(verify_password, stored, password)
        return d.addCallback(checked).addBoth(share)


@implementer(IRealm)
class MailRealm:
    def __init__(self, store: Any, directory: IDirectory):
        self.store = store
        self.directory = directory
        self._factories: dict[Any, Callable[[MailUser], Any]] = {}

    def register(self, interface, factory: Callable[[MailUser], Any]) -> None:
        """Avatars for ``interface`` are ``factory(mail_user)``; logout is ``avatar.logout()``
        when it has one."""
        self._factories[interface] = factory

    def requestAvatar(self, avatarId, mind, *interfaces):
        address = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        user = MailUser(address, self.store, self.directory)
        for iface in interfaces:
            if iface is IMailUser:
                return IMailUser, user, lambda: None
            factory = self._factories.get(iface)
            if factory is not None:
                avatar = factory(user)
                return iface, avatar, getattr(avatar, "logout", lambda: None)
        raise NotImplementedError(f"no avatar for {interfaces!r}")


def build_portal(store: Any, directory: IDirectory, threaded: bool = True) -> tuple[Portal, MailRealm]:
    return_big_allocations_to_the_system()
    realm = MailRealm(store, directory)
    portal = Portal(realm, [DirectoryChecker(directory, threaded=threaded)])
    return portal, realm
