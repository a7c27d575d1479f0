"""Deterministic sampling by hash, so that tests outside the service can compute the
expected samples.

`sample_fraction(seed)` is the first 8 bytes of the SHA-256 digest of the UTF-8
seed, read as a big-endian unsigned integer and divided by 2**64.
`keep_random_sample(collector_key, input_id, keep_fraction)` keeps an input when
`sample_fraction(collector_key + "/" + input_id) < keep_fraction`.
"""

from __future__ import annotations

import hashlib
import math

_MAX_FRACTION = math.nextafter(1.0, 0.0)


def fraction_from_digest(digest: bytes) -> float:
    """Return the first 8 bytes of `digest`, big-endian, divided by 2**64.

    The float division rounds to 1.0 for the top 2**10 integers (from
    2**64 - 2**10 on), so those return the largest float below 1.0 instead, and the
    result is always in [0, 1).
    """
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return fraction if fraction < 1.0 else _MAX_FRACTION


def digest_limit(keep_fraction: float) -> bytes:
    """Return the bytes `limit` for which `digest < limit` is true exactly when
    `fraction_from_digest(digest) < keep_fraction`, for any SHA-256 digest.

    Bytes of equal length compare as big-endian integers, so the limit is the
    smallest 8-byte prefix that is not kept. A digest with that prefix is longer
    than the limit and so compares greater. The stage-one loop compares digests
    with it instead of converting each one to a float.
    """
    if keep_fraction <= 0.0:
        return b""
    low, high = 0, 2**64
    while low < high:
        middle = (low + high) // 2
        if fraction_from_digest(middle.to_bytes(8, "big")) < keep_fraction:
            low = middle + 1
        else:
            high = middle
    if low == 2**64:
        # Every digest is kept, so the limit is above every 32-byte digest.
        return b"\xff" * 33
    return low.to_bytes(8, "big")


def sample_fraction(seed: str) -> float:
    """Return a fraction in [0, 1) derived from the SHA-256 digest of the UTF-8 seed."""
    return fraction_from_digest(hashlib.sha256(seed.encode()).digest())


def keep_random_sample(collector_key: str, input_id: str, keep_fraction: float) -> bool:
    """Return whether a collector's random sample keeps the input.

    Each input is kept with probability `keep_fraction`, and the decision depends
    only on the arguments.
    """
    return sample_fraction(collector_key + "/" + input_id) < keep_fraction
