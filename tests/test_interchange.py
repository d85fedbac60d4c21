import json
from pathlib import Path

import pytest

from mmrecall.core.interchange import (
    FormatError,
    InteractionRecord,
    ItemRecord,
    read_interactions,
    read_items,
    tag_at_level,
    write_interactions,
    write_items,
)


def test_roundtrip_resolves_media_against_dataset_dir(tmp_path: Path) -> None:
    items = [
        ItemRecord(id="a", title="Pasta", tags=["food/noodles", "food/noodles", " quick "], cover="img/a.png"),
        ItemRecord(id="b", title="Tennis", frames=["f/1.png", "f/2.png"], created_at="2024-01-02T00:00:00+00:00"),
    ]
    rows = [InteractionRecord(user_id="u1", item_id="a", timestamp=1700000000, event="click", weight=1.5)]
    assert write_items(tmp_path, items) == 2
    assert write_interactions(tmp_path, rows) == 1
    read = list(read_items(tmp_path))
    assert read[0].tags == ["food/noodles", "quick"]  # deduplicated, stripped
    assert read[0].cover == str((tmp_path / "img/a.png").resolve())
    assert read[1].frames == [str((tmp_path / "f/1.png").resolve()), str((tmp_path / "f/2.png").resolve())]
    assert read[1].created_at == 1704153600.0
    assert list(read_interactions(tmp_path)) == rows


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps({"id": "ok"}), json.dumps({"title": "no id"})]
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"items.jsonl:2"):
        list(read_items(tmp_path))


def test_bad_interaction_header(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text("user,item\n1,2\n")
    with pytest.raises(FormatError, match="header lacks"):
        list(read_interactions(tmp_path))


def test_control_characters_in_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        ItemRecord(id="a\nb")


def test_tag_levels() -> None:
    assert tag_at_level("food/noodles/ramen", 1) == "food"
    assert tag_at_level("food/noodles/ramen", 2) == "food/noodles"
    assert tag_at_level("food/noodles/ramen", 0) == "food/noodles/ramen"
    assert tag_at_level("Comedy", 2) == "Comedy"
