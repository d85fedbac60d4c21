"""The package as users install it: a wheel that adds `mmrecall` and nothing else to site-packages, whose
imports keep the layer map (import-linter) and whose floor, index and recall service type-check (mypy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel built from this checkout, the directory it unpacks to: a site-packages of its own)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a clean copy: a stale build/ directory in the checkout would leak into the wheel
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    path = next(out.glob("mmrecall-*.whl"))
    site = out / "site"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(site)
    return path, site


def test_the_wheel_installs_only_the_mmrecall_package(wheel: tuple[Path, Path]) -> None:
    path, site = wheel
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = archive.read(f"{dist_info}/top_level.txt").decode().split()
    assert {n.split("/")[0] for n in names} == {"mmrecall", dist_info}
    assert top_level == ["mmrecall"]
    # every module of every design folder is in it, under mmrecall.<folder>, with the data files
    parts = (
        "core",
        "storage",
        "encoders",
        "index",
        "finetune",
        "pipeline",
        "workers",
        "recall",
        "api",
        "evaluation",
        "benchmarks",
        "cli",
    )
    in_checkout = {f"mmrecall/{p.relative_to(ROOT)}" for part in parts for p in (ROOT / part).rglob("*.py")}
    in_wheel = {n for n in names if n.endswith(".py")}
    assert in_checkout - in_wheel == set(), "modules left out of the wheel (pyproject.toml's packages)"
    assert (site / "mmrecall" / "encoders" / "configs" / "tiny-test.json").is_file()
    assert (site / "mmrecall" / "api" / "ui" / "index.html").is_file()


def _run_in(site: Path, command: list[str]) -> subprocess.CompletedProcess:
    """A tool run against the unpacked wheel (not this checkout: its folders are not laid out as the package)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(command, cwd=site, env=env, capture_output=True, text=True, timeout=600)


def test_imports_keep_the_layer_map(wheel: tuple[Path, Path]) -> None:
    """No import runs up a layer; encoders and index never meet; nothing imports the workers, the API or
    the CLI; the floor and the serving side never import torch (pyproject.toml's [tool.importlinter])."""
    _, site = wheel
    result = _run_in(site, [str(TOOLS / "lint-imports"), str(ROOT / "pyproject.toml"), "--no-cache"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_floor_the_index_and_the_recall_service_type_check(wheel: tuple[Path, Path]) -> None:
    _, site = wheel
    packages = ["-p", "mmrecall.core", "-p", "mmrecall.index", "-p", "mmrecall.recall"]
    command = [str(TOOLS / "mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", *packages]
    result = _run_in(site, command)
    assert result.returncode == 0, result.stdout + result.stderr
