"""Wire encoding of IMAP response values: quoted strings, literals, NIL, sequence sets."""
from __future__ import annotations

_SAFE_QUOTED = bytes(c for c in range(32, 127) if c not in (0x22, 0x5C))
_QUOTE_TABLE = bytes.maketrans(b"", b"")


def quote_string(s: bytes | str) -> bytes:
    """A quoted string when the value allows it, a literal otherwise."""
    if isinstance(s, str):
        s = s.encode("utf-8", "surrogateescape")
    if len(s) < 1024 and not s.translate(_QUOTE_TABLE, _SAFE_QUOTED + b'"\\'):
        if b'"' in s or b"\\" in s:
            s = s.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + s + b'"'
    return literal(s)


def literal(s: bytes) -> bytes:
    return b"{%d}\r\n" % len(s) + s


def nstring(s: bytes | str | None) -> bytes:
    if s is None:
        return b"NIL"
    return quote_string(s)


def astring(s: bytes | str) -> bytes:
    return quote_string(s)


def seqset_text(numbers) -> str:
    """Compact sorted numbers as "1:3,7,9:10"."""
    nums = sorted(set(numbers))
    if not nums:
        return ""
    out = []
    start = prev = nums[0]
    for n in nums[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}:{prev}")
        start = prev = n
    out.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(out)


def ordered_set_text(numbers) -> str:
    """Numbers in the given order (COPYUID pairs source and destination by position)."""
    out = []
    nums = list(numbers)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)
