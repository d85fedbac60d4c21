"""The dataset interchange format: a directory with `items.jsonl` and `interactions.csv`.

items.jsonl, one JSON object per line:
    id (string, required), title (string), tags (list of strings; hierarchical tags as "level1/level2"),
    cover (image path), frames (list of image paths), video (video path), created_at (unix seconds or ISO 8601).
    Media paths are relative to the dataset directory, or absolute.
interactions.csv, with a header: user_id,item_id,timestamp[,event][,weight]
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

ITEMS_FILE = "items.jsonl"
INTERACTIONS_FILE = "interactions.csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event", "weight")
MAX_ID_LENGTH = 128
MAX_TITLE_LENGTH = 10_000
MAX_TAGS = 256
MAX_FRAMES = 256  # frame images listed per item; encoders sample a handful of them
MAX_PATH_LENGTH = 4096


class FormatError(ValueError):
    """A dataset file that does not follow the interchange format; the message says where."""


class ItemRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    title: str = Field(default="", max_length=MAX_TITLE_LENGTH)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    cover: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    frames: list[str] | None = Field(default=None, max_length=MAX_FRAMES)
    video: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    created_at: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if any(ch in value for ch in "\x00\n\r\t") or value in (".", ".."):
            raise ValueError("id must be printable, without control characters")
        return value

    def has_content(self) -> bool:
        """Something an encoder can read: a title, a tag or a media file."""
        return bool(self.title or self.tags or self.cover or self.frames or self.video)

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, value: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for tag in value:
            tag = _strip_tag(tag)
            if tag:
                seen.setdefault(tag, None)
        return list(seen)

    @field_validator("created_at", mode="before")
    @classmethod
    def _parse_time(cls, value: object) -> object:
        if isinstance(value, str) and value:
            try:
                return float(value)
            except ValueError:
                return datetime.fromisoformat(value).timestamp()
        return value

    def with_resolved_media(self, base: Path) -> ItemRecord:
        """Media paths made absolute against the dataset directory."""

        def resolve(path: str | None) -> str | None:
            return None if not path else str((base / path).resolve())

        return self.model_copy(
            update={
                "cover": resolve(self.cover),
                "video": resolve(self.video),
                "frames": None if self.frames is None else [resolve(f) for f in self.frames],
            }
        )


class InteractionRecord(BaseModel):
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    timestamp: float = Field(allow_inf_nan=False)
    event: str | None = Field(default=None, max_length=64)
    weight: float | None = Field(default=None, allow_inf_nan=False)


def _strip_tag(tag: str) -> str:
    """Whitespace and slashes off both ends, until none is left: one pass of each would leave the space in
    "/ a", so cleaning a cleaned tag again would change it."""
    while True:
        stripped = tag.strip().strip("/")
        if stripped == tag:
            return tag
        tag = stripped


def tag_at_level(tag: str, level: int) -> str:
    """`a/b/c` at level 1 is `a`, at level 2 `a/b`; level 0 means the leaf (the whole tag)."""
    parts = tag.split("/")
    return tag if level <= 0 else "/".join(parts[:level])


def read_items(dataset_dir: Path, *, resolve_media: bool = True) -> Iterator[ItemRecord]:
    path = Path(dataset_dir) / ITEMS_FILE
    if not path.is_file():
        raise FormatError(f"{path}: not found (a dataset directory needs {ITEMS_FILE})")
    base = path.parent.resolve()
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                record = ItemRecord.model_validate(json.loads(line))
            except UnicodeDecodeError as exc:
                raise FormatError(f"{path}:{line_no}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
            except (json.JSONDecodeError, ValueError) as exc:
                raise FormatError(f"{path}:{line_no}: {exc}") from exc
            yield record.with_resolved_media(base) if resolve_media else record


def read_interactions(dataset_dir: Path) -> Iterator[InteractionRecord]:
    path = Path(dataset_dir) / INTERACTIONS_FILE
    if not path.is_file():
        return
    with path.open(encoding="utf-8", newline="") as handle:
        try:
            reader = csv.DictReader(handle)
            missing = {"user_id", "item_id", "timestamp"} - set(reader.fieldnames or [])
            if missing:
                raise FormatError(f"{path}: header lacks {sorted(missing)}")
            for line_no, row in enumerate(reader, start=2):
                try:
                    record = InteractionRecord(
                        user_id=row["user_id"],
                        item_id=row["item_id"],
                        timestamp=float(row["timestamp"]),
                        event=row.get("event") or None,
                        weight=float(row["weight"]) if row.get("weight") not in (None, "") else None,
                    )
                except (ValueError, TypeError) as exc:  # TypeError: a short row leaves a field None
                    raise FormatError(f"{path}:{line_no}: {exc}") from exc
                yield record
        except UnicodeDecodeError as exc:
            raise FormatError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
        except csv.Error as exc:
            raise FormatError(f"{path}:{reader.line_num}: {exc}") from exc


def write_items(dataset_dir: Path, items: Iterable[ItemRecord]) -> int:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with (dataset_dir / ITEMS_FILE).open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.model_dump(exclude_none=True), ensure_ascii=False) + "\n")
            count += 1
    return count


def write_interactions(dataset_dir: Path, rows: Iterable[InteractionRecord]) -> int:
    dataset_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with (dataset_dir / INTERACTIONS_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(INTERACTION_COLUMNS)
        for row in rows:
            weight = "" if row.weight is None else repr(row.weight)  # full precision: files round-trip
            stamp = str(int(row.timestamp)) if row.timestamp.is_integer() else repr(row.timestamp)
            writer.writerow([row.user_id, row.item_id, stamp, row.event or "", weight])
            count += 1
    return count
