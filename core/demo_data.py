"""The embedded demo catalogue: items whose titles, tags and rendered covers follow a two-level taxonomy.

Generated, not shipped: `generate_demo(dir)` writes the interchange format plus PNG covers, seeded, so
every machine gets the same catalogue. Covers follow their tags (colour by level 1, motif by level 2),
so both the text and the image stream have something real to find.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from mmrecall.core.interchange import InteractionRecord, ItemRecord, write_interactions, write_items

TAXONOMY: dict[str, dict[str, list[str]]] = {
    "food": {
        "baking": ["sourdough bread", "chocolate cake", "croissants", "banana bread", "apple pie"],
        "noodles": ["ramen", "pad thai", "dan dan noodles", "udon soup", "pho"],
    },
    "sports": {
        "football": ["free kick", "penalty shootout", "goalkeeper save", "derby highlights", "dribbling drill"],
        "tennis": ["serve technique", "backhand slice", "grand slam final", "volley practice", "baseline rally"],
    },
    "travel": {
        "beach": ["tropical beach", "surfing waves", "island sunset", "snorkeling reef", "seaside village"],
        "mountains": ["alpine hike", "summit climb", "glacier trek", "mountain cabin", "ridge trail"],
    },
    "music": {
        "guitar": ["guitar solo", "acoustic cover", "fingerstyle lesson", "blues riff", "guitar tuning"],
        "piano": ["piano sonata", "jazz piano", "piano lesson", "chopin nocturne", "piano improvisation"],
    },
    "pets": {
        "cats": ["kitten", "cat nap", "cat toys", "grumpy cat", "cat grooming"],
        "dogs": ["puppy training", "dog park", "golden retriever", "dog tricks", "husky"],
    },
    "tech": {
        "phones": ["smartphone review", "phone camera test", "battery test", "phone unboxing", "foldable phone"],
        "gaming": ["speedrun", "boss fight", "game review", "esports final", "retro console"],
    },
}
ADJECTIVES = ["Easy", "Amazing", "Quick", "Ultimate", "Beginner", "Epic", "Relaxing", "Perfect", "Classic", "Best"]
SUFFIXES = ["at home", "in 5 minutes", "you must see", "guide", "compilation", "tutorial", "vlog", "challenge"]
HUES = {name: i / len(TAXONOMY) for i, name in enumerate(TAXONOMY)}
COVER_SIZE = (160, 120)


def _colour(hue: float, rng: random.Random, light: float) -> tuple[int, int, int]:
    import colorsys

    h = (hue + rng.uniform(-0.03, 0.03)) % 1.0
    r, g, b = colorsys.hls_to_rgb(h, light + rng.uniform(-0.08, 0.08), 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def render_cover(level1: str, leaf_index: int, rng: random.Random) -> Image.Image:
    """Background colour from the level-1 tag, a motif per level-2 tag, jittered per item."""
    width, height = COVER_SIZE
    image = Image.new("RGB", COVER_SIZE, _colour(HUES[level1], rng, 0.55))
    draw = ImageDraw.Draw(image)
    fg = _colour((HUES[level1] + 0.5) % 1.0, rng, 0.35)
    cx, cy = width / 2 + rng.uniform(-20, 20), height / 2 + rng.uniform(-15, 15)
    size = rng.uniform(25, 45)
    if leaf_index == 0:  # stripes and a disc
        for x in range(0, width, 16):
            draw.rectangle([x, 0, x + 6, height], fill=_colour(HUES[level1], rng, 0.7))
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=fg)
    else:  # a checker and a triangle
        for x in range(0, width, 20):
            for y in range((x // 20) % 2 * 20, height, 40):
                draw.rectangle([x, y, x + 19, y + 19], fill=_colour(HUES[level1], rng, 0.45))
        points = [(cx + size * math.cos(a), cy + size * math.sin(a)) for a in (-1.57, 0.52, 2.62)]
        draw.polygon(points, fill=fg)
    return image


def generate_demo(out_dir: Path, *, per_leaf: int = 25, users: int = 60, seed: int = 7) -> Path:
    """Write items.jsonl, interactions.csv and covers/ under `out_dir`; returns `out_dir`."""
    rng = random.Random(seed)
    covers = out_dir / "covers"
    covers.mkdir(parents=True, exist_ok=True)
    items: list[ItemRecord] = []
    by_leaf: dict[str, list[str]] = {}
    for level1, leaves in TAXONOMY.items():
        for leaf_index, (level2, nouns) in enumerate(leaves.items()):
            for n in range(per_leaf):
                item_id = f"{level1}-{level2}-{n:03d}"
                title = f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)} {rng.choice(SUFFIXES)}"
                cover = f"covers/{item_id}.png"
                render_cover(level1, leaf_index, rng).save(out_dir / cover)
                tag = f"{level1}/{level2}"
                items.append(
                    ItemRecord(id=item_id, title=title, tags=[tag], cover=cover, created_at=1.7e9 + len(items))
                )
                by_leaf.setdefault(tag, []).append(item_id)
    write_items(out_dir, items)
    leaves_list = sorted(by_leaf)
    rows: list[InteractionRecord] = []
    for user in range(users):  # each user likes two leaves, with some noise
        liked = rng.sample(leaves_list, 2)
        for step in range(20):
            leaf = rng.choice(liked) if rng.random() < 0.85 else rng.choice(leaves_list)
            rows.append(
                InteractionRecord(
                    user_id=f"u{user:03d}", item_id=rng.choice(by_leaf[leaf]), timestamp=1.7e9 + step * 60
                )
            )
    write_interactions(out_dir, rows)
    return out_dir
