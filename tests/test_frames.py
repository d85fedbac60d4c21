"""Frame sampling on real and synthetic videos, and the failures that must carry a reason."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mmrecall.encoders import create_encoder
from mmrecall.encoders.frames import MAX_FRAMES, item_frames, sample_video_frames, uniform_positions
from mmrecall.encoders.media import MediaError, load_content
from tests.helpers import shared_dataset

pytestmark = pytest.mark.service  # run again with every snapshot in Milvus (README)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def make_video(path: Path, seconds_per_colour: int = 1, fps: int = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """A video whose colour changes every second: red, green, blue, yellow."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for colour in COLOURS:
            for _ in range(seconds_per_colour * fps):
                frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), colour, np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def dominant(image: Image.Image) -> int:
    mean = np.asarray(image, np.float32).reshape(-1, 3).mean(axis=0)
    return int(np.argmin([np.abs(mean - np.array(c)).sum() for c in COLOURS]))


def test_uniform_positions() -> None:
    assert uniform_positions(10, 2) == [2, 7]
    assert uniform_positions(3, 8) == [0, 1, 2]
    assert uniform_positions(0, 4) == []


def test_samples_are_uniform_in_time(tmp_path: Path) -> None:
    video = make_video(tmp_path / "colours.mp4")
    frames = sample_video_frames(video, 4)
    assert [dominant(f) for f in frames] == [0, 1, 2, 3]
    assert len(sample_video_frames(video, 8)) == 8


def test_cover_is_frame_zero_and_frame_lists_are_sampled(tmp_path: Path) -> None:
    video = make_video(tmp_path / "colours.mp4")
    cover = tmp_path / "cover.png"
    Image.new("RGB", (30, 30), (255, 255, 0)).save(cover)
    frames = item_frames(cover=str(cover), frames=None, video=str(video), n=5)
    assert [dominant(f) for f in frames] == [3, 0, 1, 2, 3]  # the cover, then 4 frames at 0.5, 1.5, 2.5, 3.5 s
    listed = []
    for i, colour in enumerate(COLOURS):
        listed.append(str(tmp_path / f"f{i}.png"))
        Image.new("RGB", (20, 20), colour).save(listed[-1])
    assert [dominant(f) for f in item_frames(cover=None, frames=listed, video=None, n=2)] == [1, 3]
    only_cover = load_content("t", [], str(cover), None, None, n_frames=8)
    assert only_cover.image is not None and only_cover.frames == []  # a one-frame video


def test_bad_videos_fail_with_reasons(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        sample_video_frames(tmp_path / "none.mp4", 4)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        sample_video_frames(tmp_path / "empty.mp4", 4)
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(MediaError, match="undecodable|no video|no frame"):
        sample_video_frames(tmp_path / "junk.mp4", 4)
    video = make_video(tmp_path / "ok.mp4")
    for count in (0, MAX_FRAMES + 1, 10_000):
        with pytest.raises(MediaError, match="frame count"):
            sample_video_frames(video, count)


def test_huge_frames_are_scaled_while_decoding(tmp_path: Path) -> None:
    video = make_video(tmp_path / "big.mp4", size=(1920, 1080))
    frame = sample_video_frames(video, 1)[0]
    assert min(frame.size) == 256 and frame.size[0] > frame.size[1]


def test_real_microlens_videos_encode() -> None:
    videos = shared_dataset("microlens-50k-sample", "videos")
    encoder = create_encoder("tiny-dual")
    contents = [
        load_content(f"video {p.stem}", [], None, None, str(p), n_frames=encoder.n_frames)
        for p in sorted(videos.glob("*.mp4"))
    ]
    assert len(contents) == 3 and all(len(c.all_frames()) == encoder.n_frames for c in contents)
    vectors = encoder.encode(contents)
    assert vectors.shape == (3, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_a_video_items_frames_are_served_and_counted(service) -> None:
    """A video-only item, encoded by a real worker: the item says how many frames the encoder read and how
    many thumbnails it keeps; the media route serves them (in time order) and uses frame 0 as its cover."""
    video = make_video(service.settings.media_roots[0] / "colours.mp4", seconds_per_colour=2)
    http = service.http
    ids = http.post("/v1/items", json={"items": [{"id": "clip", "title": "colours", "video": str(video)}]}).json()
    assert service.wait_items(ids["ids"])["clip"]["status"] == "ready"
    item = http.get("/v1/items/clip").json()
    assert item["frames_used"] == 1 and item["frame_thumbnails"] == 8  # tiny-test reads one; eight are kept
    colours = []
    for n in range(8):
        frame = http.get("/v1/items/clip/media/frame", params={"n": n})
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        colours.append(dominant(Image.open(io.BytesIO(frame.content)).convert("RGB")))
    assert colours == sorted(colours) and set(colours) == {0, 1, 2, 3}  # red, green, blue, yellow in order
    assert http.get("/v1/items/clip/media/cover").status_code == 200
    assert http.get("/v1/items/clip/media/frame", params={"n": 8}).status_code == 404
