"""Convert any official MovieLens release into the interchange format.

Layouts: ml-100k (`u.data`, `u.item`, `u.genre`), ml-1m / ml-10m (`*.dat` with `::`), and ml-latest /
ml-latest-small / ml-20m/25m/32m (`movies.csv`, `ratings.csv`, `tags.csv`). Title -> title, genres -> tags,
user tags (tags.csv, where present) -> more tags, posters joined by movie id (`{movieId}.jpg|png`).
Posters are referenced by absolute path, never copied: their terms forbid redistribution.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmrecall.core.interchange import FormatError, InteractionRecord, ItemRecord, write_interactions, write_items

NO_GENRE = "(no genres listed)"
POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImportSummary:
    layout: str
    items: int
    with_cover: int
    interactions: int


def detect_layout(raw_dir: Path) -> str:
    if (raw_dir / "movies.csv").is_file() and (raw_dir / "ratings.csv").is_file():
        return "latest"
    if (raw_dir / "movies.dat").is_file() and (raw_dir / "ratings.dat").is_file():
        return "dat"
    if (raw_dir / "u.item").is_file() and (raw_dir / "u.data").is_file():
        return "100k"
    raise FormatError(
        f"{raw_dir}: no MovieLens layout found (expected movies.csv+ratings.csv, movies.dat+ratings.dat, "
        "or u.item+u.data)"
    )


def _genres(field: str, sep: str = "|") -> list[str]:
    return [g for g in field.split(sep) if g and g != NO_GENRE]


def _movies_latest(raw_dir: Path) -> Iterator[tuple[str, str, list[str]]]:
    with (raw_dir / "movies.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            yield row["movieId"], row["title"], _genres(row["genres"])


def _ratings_latest(raw_dir: Path) -> Iterator[InteractionRecord]:
    with (raw_dir / "ratings.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            yield InteractionRecord(
                user_id=row["userId"],
                item_id=row["movieId"],
                timestamp=float(row["timestamp"]),
                event="rating",
                weight=float(row["rating"]),
            )


def _user_tags_latest(raw_dir: Path) -> dict[str, list[str]]:
    path = raw_dir / "tags.csv"
    tags: dict[str, dict[str, None]] = {}
    if path.is_file():
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                # user tags are flat free text; a "/" would read as a level separator
                tag = " ".join(row["tag"].replace("/", " ").split()).lower()
                if tag:
                    tags.setdefault(row["movieId"], {})[tag] = None
    return {movie: list(values) for movie, values in tags.items()}


def _movies_dat(raw_dir: Path) -> Iterator[tuple[str, str, list[str]]]:
    with (raw_dir / "movies.dat").open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                movie_id, title, genres = line.rstrip("\n").split("::")
                yield movie_id, title, _genres(genres)


def _ratings_dat(raw_dir: Path) -> Iterator[InteractionRecord]:
    with (raw_dir / "ratings.dat").open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                user, movie, rating, stamp = line.strip().split("::")
                yield InteractionRecord(
                    user_id=user, item_id=movie, timestamp=float(stamp), event="rating", weight=float(rating)
                )


def _movies_100k(raw_dir: Path) -> Iterator[tuple[str, str, list[str]]]:
    names: dict[int, str] = {}
    genre_file = raw_dir / "u.genre"
    if genre_file.is_file():
        for line in genre_file.read_text(encoding="latin-1").splitlines():
            if "|" in line:
                name, index = line.rsplit("|", 1)
                names[int(index)] = name
    with (raw_dir / "u.item").open(encoding="latin-1") as handle:
        for line in handle:
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            flags = fields[5:]
            genres = [names.get(i, f"genre{i}") for i, flag in enumerate(flags) if flag == "1"]
            yield fields[0], fields[1], [g for g in genres if g != "unknown"]


def _ratings_100k(raw_dir: Path) -> Iterator[InteractionRecord]:
    with (raw_dir / "u.data").open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                user, movie, rating, stamp = line.split()
                yield InteractionRecord(
                    user_id=user, item_id=movie, timestamp=float(stamp), event="rating", weight=float(rating)
                )


READERS = {
    "latest": (_movies_latest, _ratings_latest, _user_tags_latest),
    "dat": (_movies_dat, _ratings_dat, lambda _raw: {}),
    "100k": (_movies_100k, _ratings_100k, lambda _raw: {}),
}


def _poster_index(posters: Path | None) -> dict[str, Path]:
    if posters is None:
        return {}
    if not posters.is_dir():
        raise FormatError(f"{posters}: posters directory not found")
    return {p.stem: p.resolve() for p in posters.iterdir() if p.suffix.lower() in POSTER_SUFFIXES}


def import_movielens(raw_dir: Path, out_dir: Path, *, posters: Path | None = None) -> ImportSummary:
    layout = detect_layout(raw_dir)
    read_movies, read_ratings, read_tags = READERS[layout]
    poster_of = _poster_index(posters)
    user_tags = read_tags(raw_dir)
    items = [
        ItemRecord(
            id=movie_id,
            title=title.strip(),
            tags=genres + user_tags.get(movie_id, []),
            cover=str(poster_of[movie_id]) if movie_id in poster_of else None,
        )
        for movie_id, title, genres in read_movies(raw_dir)
    ]
    n_items = write_items(out_dir, items)
    n_rows = write_interactions(out_dir, read_ratings(raw_dir))
    return ImportSummary(layout, n_items, sum(1 for i in items if i.cover), n_rows)
