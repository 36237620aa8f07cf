"""x-request-id values: random version-4 UUIDs in Envoy's text form, made in batches."""

from __future__ import annotations

import random
import re
import uuid
from collections import Counter

from proxy.http.request_id import BATCH, RequestIds

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_every_id_is_a_version_4_uuid_in_canonical_text() -> None:
    ids = RequestIds(random.Random(1))
    for _ in range(3 * BATCH):
        value = ids.next()
        assert _UUID4.fullmatch(value), value
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_ids_do_not_repeat_across_batches() -> None:
    ids = RequestIds(random.Random(2))
    values = [ids.next() for _ in range(10 * BATCH)]
    assert len(set(values)) == len(values)


def test_random_digits_and_the_variant_digit_are_uniform() -> None:
    ids = RequestIds(random.Random(3))
    values = [ids.next() for _ in range(40 * BATCH)]
    variants = Counter(value[19] for value in values)
    assert set(variants) == set("89ab")
    assert min(variants.values()) > 0.9 * len(values) / 4
    digits = Counter(value[0] for value in values)
    assert set(digits) == set("0123456789abcdef")
    assert min(digits.values()) > 0.8 * len(values) / 16


def test_the_random_source_decides_the_ids() -> None:
    first = [RequestIds(random.Random(4)).next() for _ in range(2)]
    assert first[0] == first[1]
