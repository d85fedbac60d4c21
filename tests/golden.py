"""Fixed inputs for the golden-vector test. Regenerate after an intended change with:
MMRECALL_UPDATE_GOLDEN=1 pytest tests/test_encoders.py -k golden
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from mmrecall.encoders import ContentInput

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "assets" / "golden"


def golden_inputs() -> list[ContentInput]:
    striped = Image.new("RGB", (96, 64), (200, 40, 40))
    draw = ImageDraw.Draw(striped)
    for x in range(0, 96, 12):
        draw.rectangle([x, 0, x + 5, 64], fill=(20, 20, 220))
    disc = Image.new("RGB", (50, 120), (250, 250, 240))
    ImageDraw.Draw(disc).ellipse([5, 40, 45, 80], fill=(0, 120, 0))
    return [
        ContentInput("Easy sourdough bread at home", ["food/baking"], striped),
        ContentInput("Grand slam final highlights", ["sports/tennis", "sports"], disc),
        ContentInput("A title with no cover", []),
    ]
