import hashlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.sampling import (
    digest_limit,
    fraction_from_digest,
    keep_random_sample,
    sample_fraction,
)


def reference_fraction(seed: str) -> float:
    """Independent implementation of the documented formula."""
    return int(hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16], 16) / 2**64


@pytest.mark.parametrize(
    ("seed", "first_8_bytes"),
    [
        # SHA-256 test vectors from FIPS 180-2.
        ("", 0xE3B0C44298FC1C14),
        ("abc", 0xBA7816BF8F01CFEA),
    ],
)
def test_sample_fraction_known_vectors(seed: str, first_8_bytes: int) -> None:
    assert sample_fraction(seed) == first_8_bytes / 2**64


@pytest.mark.parametrize("seed", ["collector/input-1", "é/ü", "a" * 1000, "\x00"])
def test_sample_fraction_matches_reference(seed: str) -> None:
    assert sample_fraction(seed) == reference_fraction(seed)


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        (b"\x00" * 8, 0.0),
        (b"\x80" + b"\x00" * 7, 0.5),
        (b"\x40" + b"\x00" * 7 + b"\xff" * 24, 0.25),
        # From 2**64 - 2**10 on, the quotient rounds to 1.0 and is clamped below it.
        (b"\xff" * 8, math.nextafter(1.0, 0.0)),
        ((2**64 - 2**10).to_bytes(8, "big"), math.nextafter(1.0, 0.0)),
        # The largest integer whose quotient rounds below 1.0 by itself.
        ((2**64 - 2**10 - 1).to_bytes(8, "big"), 1.0 - 2**-53),
    ],
)
def test_fraction_from_digest_cases(digest: bytes, expected: float) -> None:
    assert fraction_from_digest(digest) == expected


@given(st.text())
def test_sample_fraction_in_unit_interval(seed: str) -> None:
    fraction = sample_fraction(seed)
    assert 0.0 <= fraction < 1.0


@given(st.text())
def test_sample_fraction_deterministic(seed: str) -> None:
    assert sample_fraction(seed) == sample_fraction(seed)
    assert sample_fraction(seed) == reference_fraction(seed)


@pytest.mark.parametrize(
    ("collector_key", "input_id", "keep_fraction"),
    [
        ("u/a/c", "input-1", 0.5),
        ("u/a/c", "input-2", 0.5),
        ("u/a/c", "input-3", 0.1),
        ("other", "input-1", 0.9),
        ("", "", 0.5),
    ],
)
def test_keep_random_sample_cases(
    collector_key: str, input_id: str, keep_fraction: float
) -> None:
    expected = reference_fraction(f"{collector_key}/{input_id}") < keep_fraction
    assert keep_random_sample(collector_key, input_id, keep_fraction) is expected


@given(st.text(), st.text())
def test_keep_random_sample_fraction_bounds(collector_key: str, input_id: str) -> None:
    assert keep_random_sample(collector_key, input_id, 1.0) is True
    assert keep_random_sample(collector_key, input_id, 0.0) is False


@settings(max_examples=20, deadline=None)
@given(
    keep_fraction=st.floats(min_value=0.0, max_value=1.0),
    collector_key=st.text(max_size=20),
    id_seed=st.integers(min_value=0, max_value=2**32),
)
def test_keep_random_sample_kept_share(
    keep_fraction: float, collector_key: str, id_seed: int
) -> None:
    # The share's standard deviation is at most 0.0036 for 20,000 ids, so a
    # tolerance of 0.02 is more than 5 standard deviations.
    rng = random.Random(id_seed)
    input_ids = [f"{rng.getrandbits(64):016x}" for _ in range(20_000)]
    kept = sum(
        keep_random_sample(collector_key, input_id, keep_fraction)
        for input_id in input_ids
    )
    assert abs(kept / len(input_ids) - keep_fraction) <= 0.02


@given(
    st.floats(min_value=-1.0, max_value=2.0, allow_nan=False),
    st.binary(min_size=32, max_size=32),
)
def test_digest_limit_agrees_with_fraction_comparison(
    keep_fraction: float, digest: bytes
) -> None:
    limit = digest_limit(keep_fraction)
    assert (digest < limit) == (fraction_from_digest(digest) < keep_fraction)


@pytest.mark.parametrize(
    "keep_fraction", [1e-300, 2**-64, 0.1, 0.5, 1 / 3, math.nextafter(1.0, 0.0)]
)
def test_digest_limit_boundary_prefixes(keep_fraction: float) -> None:
    # The prefixes on either side of the limit are where a wrong limit shows.
    limit = digest_limit(keep_fraction)
    boundary = int.from_bytes(limit, "big")
    for prefix in (boundary - 1, boundary, boundary + 1):
        if 0 <= prefix < 2**64:
            digest = prefix.to_bytes(8, "big") + bytes(24)
            expected = fraction_from_digest(digest) < keep_fraction
            assert (digest < limit) == expected, prefix


@pytest.mark.parametrize(
    ("keep_fraction", "kept"), [(0.0, False), (-0.5, False), (1.0, True), (1.5, True)]
)
def test_digest_limit_keeps_none_or_all(keep_fraction: float, kept: bool) -> None:
    limit = digest_limit(keep_fraction)
    for digest in (bytes(32), b"\xff" * 32, hashlib.sha256(b"x").digest()):
        assert (digest < limit) is kept
