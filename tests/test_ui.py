"""The web inspector in a real headless browser (Debian's Chromium driven by Playwright), against the
real API with a catalogue encoded by a real worker: item page, neighbour images, following a neighbour,
the user page with recall and provenance."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mmrecall.core.demo_data import generate_demo
from mmrecall.pipeline.ingest import bulk_ingest
from tests.helpers import Service

CHROMIUM = os.environ.get("MMRECALL_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}")

IMAGES_LOADED = """sel => {
  const imgs = Array.from(document.querySelectorAll(sel));
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def catalogue(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Service:
    demo = generate_demo(service.settings.media_roots[0] / "demo", per_leaf=3, users=4)  # inside the media root
    report = bulk_ingest(service.settings, demo)
    assert report["failed"] == 0
    job = service.http.post("/v1/reindex").json()["job_id"]
    assert service.wait_job(job)["state"] == "succeeded"
    return service


@pytest.fixture(scope="module")
def page(catalogue: Service):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("document.body.dataset.ready !== undefined", timeout=30_000)
    assert page.evaluate("document.body.dataset.ready") == "1", page.inner_text("main")


def test_item_page_shows_neighbour_covers_and_follows_one(catalogue: Service, page) -> None:
    first = catalogue.http.get("/v1/items", params={"status": "ready", "limit": 1}).json()["items"][0]["id"]
    open_page(page, f"{catalogue.api.url}/ui/item/{first}")
    page.wait_for_function(IMAGES_LOADED, arg="#v2v img", timeout=30_000)
    page.wait_for_function("!document.querySelector('#cluster').textContent.includes('loading')", timeout=30_000)
    if page.query_selector("#cluster img"):  # small clusters may hold the item alone
        page.wait_for_function(IMAGES_LOADED, arg="#cluster img", timeout=30_000)
    assert page.evaluate(IMAGES_LOADED, ".cover img")  # the item's own cover, through the media route
    neighbours = page.eval_on_selector_all("#v2v .card", "cards => cards.map(c => c.dataset.id)")
    assert len(neighbours) >= 5 and first not in neighbours
    page.click("#v2v .card a")
    page.wait_for_url(f"**/ui/item/{neighbours[0]}")
    open_page(page, page.url)
    assert neighbours[0] in page.inner_text("main")


def test_user_page_shows_history_interests_and_recall_with_provenance(catalogue: Service, page) -> None:
    user = "u000"
    open_page(page, f"{catalogue.api.url}/ui/user/{user}")
    page.wait_for_function("document.querySelectorAll('#recall .card').length > 0", timeout=30_000)
    assert page.eval_on_selector_all("#history .card", "cards => cards.length") > 0
    assert page.eval_on_selector_all(".interest", "blocks => blocks.length") >= 1
    channels = page.eval_on_selector_all("#recall .chips span", "spans => spans.map(s => s.textContent)")
    assert set(channels) <= {"v2v", "cluster", "personal", "multi_interest"} and len(set(channels)) >= 2
    page.click("#filters button[data-channel='v2v']")
    shown = page.eval_on_selector_all(
        "#recall .card", "cards => cards.filter(c => c.style.display !== 'none').map(c => c.dataset.channels)"
    )
    assert shown and all("v2v" in channels.split() for channels in shown)
    if os.environ.get("MMRECALL_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["MMRECALL_SCREENSHOTS"]) / "ui-user.png"), full_page=False)


def test_video_item_page_shows_its_frames(catalogue: Service, page) -> None:
    """A video-only item: the page shows the frames sampled at encode time, first as the cover."""
    from tests.test_frames import make_video

    video = make_video(catalogue.settings.media_roots[0] / "ui-clip.mp4")
    ids = catalogue.http.post("/v1/items", json={"items": [{"id": "ui-clip", "title": "clip", "video": str(video)}]})
    assert catalogue.wait_items(ids.json()["ids"])["ui-clip"]["status"] == "ready"
    open_page(page, f"{catalogue.api.url}/ui/item/ui-clip")
    page.wait_for_function(IMAGES_LOADED, arg="img[alt^='frame']", timeout=30_000)
    assert page.eval_on_selector_all("img[alt^='frame']", "imgs => imgs.length") == 8
    assert page.evaluate(IMAGES_LOADED, ".cover img") and "frames encoded: 1 of 8 shown" in page.inner_text("main")
    if os.environ.get("MMRECALL_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["MMRECALL_SCREENSHOTS"]) / "ui-video.png"), full_page=False)
