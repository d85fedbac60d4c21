"""API keys with scopes, loopback-only without keys, request size limits, media confinement and the
media URL allow-list: over real HTTP against the real app."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image
from typer.testing import CliRunner

from mmrecall.api.auth import is_loopback, parse_keys, scope_of
from mmrecall.benchmarks.faults import bad_inputs
from mmrecall.cli.main import app as cli
from mmrecall.core.fetch import FetchError, fetch_media
from tests.helpers import ApiServer, make_settings

WRITE_KEY, READ_KEY = "w" * 24 + "-write", "r" * 24 + "-read"


@pytest.fixture(scope="module")
def keyed_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    settings = make_settings(tmp_path_factory.mktemp("keys"), redis_url, api_keys=f"{WRITE_KEY}:write,{READ_KEY}:read")
    with ApiServer(settings) as api:
        yield api


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_keys_parse_and_compare() -> None:
    keys = parse_keys(f" {WRITE_KEY}:write , {READ_KEY}:read ")
    assert keys == {WRITE_KEY: "write", READ_KEY: "read"}
    assert scope_of(READ_KEY, keys) == "read" and scope_of(READ_KEY + "x", keys) is None
    for bad in ("nocolon", "short:read", f"{WRITE_KEY}:admin"):
        with pytest.raises(ValueError):
            parse_keys(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("10.1.2.3")


def test_routes_need_a_key_of_the_right_scope(keyed_api: ApiServer) -> None:
    url = keyed_api.url
    item = {"items": [{"id": "k1", "title": "keyed"}]}
    assert httpx.get(f"{url}/v1/items/k1").status_code == 401  # no key
    assert httpx.get(f"{url}/v1/items/k1", headers=bearer("nope" * 5)).status_code == 401  # unknown key
    assert httpx.post(f"{url}/v1/items", json=item, headers=bearer(READ_KEY)).status_code == 403  # read on write
    assert httpx.post(f"{url}/v1/reindex", headers=bearer(READ_KEY)).status_code == 403
    assert httpx.delete(f"{url}/v1/items/k1", headers=bearer(READ_KEY)).status_code == 403
    assert httpx.get(f"{url}/v1/items/k1", headers=bearer(READ_KEY)).status_code == 404  # read key reads
    assert httpx.post(f"{url}/v1/items", json=item, headers=bearer(WRITE_KEY)).status_code == 202  # write writes
    assert httpx.get(f"{url}/v1/items/k1", headers=bearer(WRITE_KEY)).status_code == 200  # write implies read
    assert httpx.get(f"{url}/healthz").status_code == 200  # liveness stays open


def test_without_keys_only_loopback_clients_are_served(tmp_path: Path, redis_url: str) -> None:
    from mmrecall.api.app import create_app

    app = create_app(make_settings(tmp_path, redis_url))

    async def get_as(client: tuple[str, int]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)  # the peer address a socket would give
        async with httpx.AsyncClient(transport=transport, base_url="http://mmrecall") as http:
            return await http.get("/v1/items/anything")

    for client, expected in ((("10.0.0.7", 5000), 403), (("127.0.0.1", 5000), 404)):
        response = asyncio.run(get_as(client))
        assert response.status_code == expected, response.text
        if expected == 403:
            assert "loopback" in response.json()["detail"]


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmrecall.core.settings import get_settings

    monkeypatch.setenv("MMRECALL_HOME", str(tmp_path))
    monkeypatch.delenv("MMRECALL_API_KEYS", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "without API keys" in result.output


def test_bad_input_cases_answer_as_documented(tmp_path: Path, redis_url: str) -> None:
    """Every bad request gets its 4xx with a reason; a refused request stores nothing (no worker here:
    the media cases are accepted with 202 and end `failed` in tests/test_faults.py)."""
    settings = make_settings(tmp_path, redis_url)
    with ApiServer(settings) as api, httpx.Client(base_url=api.url, timeout=60) as http:
        for case in bad_inputs(settings):
            response = case.send(http)
            assert response.status_code == case.expect, (case.name, response.text)
            if response.status_code >= 400:
                assert response.json().get("detail"), case.name  # a reason, not a bare code
        assert http.get("/v1/items/bad-outside").status_code == 404
        assert http.get("/v1/items/bad-link").status_code == 404
    redis.Redis.from_url(redis_url).delete(settings.queue)  # the accepted items' tasks: no worker here


def test_media_urls_are_fetched_only_from_allowed_hosts(tmp_path: Path, redis_url: str) -> None:
    served = tmp_path / "www"
    served.mkdir()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(served / "cover.png")
    (served / "big.bin").write_bytes(b"\0" * 5000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        allowed = make_settings(tmp_path / "a", redis_url, media_url_hosts=["127.0.0.1"], max_media_bytes=4096)
        path = fetch_media(f"{base}/cover.png", allowed)
        assert Image.open(path).size == (16, 16)
        with pytest.raises(FetchError, match="larger than"):
            fetch_media(f"{base}/big.bin", allowed)
        with pytest.raises(FetchError, match="HTTP 404"):
            fetch_media(f"{base}/missing.png", allowed)
        assert not list((allowed.home / "media-cache").glob("*.part"))  # nothing half-written is kept
        closed = make_settings(tmp_path / "c", redis_url)
        with pytest.raises(FetchError, match="not in MMRECALL_MEDIA_URL_HOSTS"):
            fetch_media(f"{base}/cover.png", closed)
        with ApiServer(allowed) as api:
            accepted = httpx.post(f"{api.url}/v1/items", json={"items": [{"id": "u1", "cover": f"{base}/cover.png"}]})
            assert accepted.status_code == 202
            refused = httpx.post(
                f"{api.url}/v1/items", json={"items": [{"id": "u2", "cover": "http://192.0.2.1/x.png"}]}
            )
            assert refused.status_code == 400 and "MMRECALL_MEDIA_URL_HOSTS" in refused.json()["detail"]
    finally:
        server.shutdown()
