"""Unit keys -> fixed-width 64-bit codes, the form the done-set stores.

Non-negative integer indexes below 2**63 are stored as themselves (exact, no
collision). Any other key (str, bytes such as a request fingerprint, other
ints) is hashed with BLAKE2b to 63 bits with the top bit set, so it never
collides with an index. Two distinct hashed keys collide with probability about
n**2 / 2**64 for n keys (about 1 in 18 million for a million keys).
"""

from __future__ import annotations

from hashlib import blake2b

_TOP = 1 << 63

UnitKey = int | str | bytes


def key_code(key: UnitKey) -> int:
    """The 64-bit code of a unit key (see the module docstring). Raises TypeError for a
    key that is not an int, str or bytes."""
    if type(key) is int and 0 <= key < _TOP:
        return key
    if isinstance(key, str):
        data = b"s" + key.encode("utf-8", "surrogatepass")
    elif isinstance(key, bytes):
        data = b"b" + key
    elif isinstance(key, int) and not isinstance(key, bool):
        data = b"i" + str(key).encode()
    else:
        raise TypeError(f"A unit key must be an int, str or bytes, not {type(key).__name__}.")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little") | _TOP


def fingerprint_code(fingerprint: bytes) -> int:
    """``key_code(fingerprint)`` for a bytes key (a request fingerprint), without the type
    dispatch: the crawl computes one per request it schedules."""
    return int.from_bytes(blake2b(b"b" + fingerprint, digest_size=8).digest(), "little") | _TOP
