"""Property-based tests (hypothesis) for the parsers and the interchange format: whatever the bytes, a
dataset file either parses or fails with a FormatError that names the file; valid records round-trip."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mmrecall.api.auth import parse_keys
from mmrecall.core.interchange import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    FormatError,
    InteractionRecord,
    ItemRecord,
    read_interactions,
    read_items,
    write_interactions,
    write_items,
)

ids = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..")
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
items = st.builds(
    ItemRecord,
    id=ids,
    title=texts,
    tags=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12), max_size=5),
    cover=st.none() | st.just("covers/a.png"),
    created_at=st.none() | st.floats(0, 2e9),
)
interactions = st.builds(
    InteractionRecord,
    user_id=ids,
    item_id=ids,
    timestamp=st.floats(0, 2e9),
    event=st.none() | st.sampled_from(["click", "rating"]),
    weight=st.none() | st.floats(-5, 5),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(items, max_size=8))
@example([ItemRecord(id="a", tags=["/ 0", "0", " /b/ "])])  # one strip of each left " 0": not idempotent
def test_items_round_trip(records: list[ItemRecord]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_items(Path(tmp), records)
        assert list(read_items(Path(tmp), resolve_media=False)) == records


@FAST
@given(st.lists(interactions, max_size=8))
def test_interactions_round_trip(rows: list[InteractionRecord]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_interactions(Path(tmp), rows)
        assert list(read_interactions(Path(tmp))) == rows


@FAST
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_items_file_parses_or_fails_with_a_format_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ITEMS_FILE).write_bytes(data)
        try:
            list(read_items(Path(tmp)))
        except FormatError as exc:
            assert ITEMS_FILE in str(exc)


@FAST
@given(st.binary(max_size=300).map(lambda b: b"user_id,item_id,timestamp\n" + b))
def test_any_interactions_file_parses_or_fails_with_a_format_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / INTERACTIONS_FILE).write_bytes(data)
        try:
            rows = list(read_interactions(Path(tmp)))
        except FormatError as exc:
            assert INTERACTIONS_FILE in str(exc)
        else:
            assert all(row.user_id and row.item_id for row in rows)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["id", "title", "tags", "cover", "frames", "created_at", "x"]),
        st.none() | st.integers() | st.floats() | st.text(max_size=30) | st.lists(st.text(max_size=5)),
    )
)
def test_item_records_validate_or_raise_validation_errors(payload: dict) -> None:
    try:
        record = ItemRecord.model_validate(payload)
    except ValidationError:
        return
    assert record.id and "\x00" not in record.id


@FAST
@given(st.text(max_size=80))
def test_api_key_specs_parse_or_raise_value_errors(spec: str) -> None:
    try:
        keys = parse_keys(spec)
    except ValueError:
        return
    assert all(scope in ("read", "write") and len(key) >= 16 for key, scope in keys.items())


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(ValidationError):
        InteractionRecord(user_id="u", item_id="i", timestamp=float("nan"))
    with pytest.raises(ValidationError):
        ItemRecord(id="a", created_at=float("inf"))
