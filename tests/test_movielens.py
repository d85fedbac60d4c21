from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmrecall.cli.main import app
from mmrecall.core.interchange import FormatError, read_interactions, read_items
from mmrecall.core.movielens import import_movielens
from tests.helpers import shared_dataset


def _posters(tmp_path: Path, ids: list[str]) -> Path:
    from PIL import Image

    folder = tmp_path / "posters"
    folder.mkdir()
    for movie in ids:
        Image.new("RGB", (20, 30), "blue").save(folder / f"{movie}.jpg")
    return folder


def test_latest_layout_with_user_tags_and_posters(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, The (1995)",(no genres listed)\n'
    )
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964982224\n")
    (raw / "tags.csv").write_text("userId,movieId,tag,timestamp\n2,1,Pixar,1\n3,1,pixar,2\n3,1,fun/kids,3\n")
    summary = import_movielens(raw, tmp_path / "out", posters=_posters(tmp_path, ["1"]))
    assert (summary.layout, summary.items, summary.with_cover, summary.interactions) == ("latest", 2, 1, 2)
    items = {item.id: item for item in read_items(tmp_path / "out")}
    assert items["1"].tags == ["Adventure", "Animation", "pixar", "fun kids"]
    assert items["2"].title == "Heat, The (1995)" and items["2"].tags == [] and items["2"].cover is None
    assert Path(items["1"].cover).name == "1.jpg"
    rows = list(read_interactions(tmp_path / "out"))
    assert [(r.user_id, r.item_id, r.weight) for r in rows] == [("1", "1", 4.0), ("1", "2", 3.5)]


def test_1m_dat_layout(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's\n2::Am\xe9lie (2001)::Comedy\n".encode("latin-1")
    )
    (raw / "ratings.dat").write_text("1::1::5::978300760\n2::2::3::978302109\n")
    summary = import_movielens(raw, tmp_path / "out")
    assert (summary.layout, summary.items, summary.interactions) == ("dat", 2, 2)
    items = {item.id: item for item in read_items(tmp_path / "out")}
    assert items["2"].title == "Amélie (2001)"
    assert items["1"].tags == ["Animation", "Children's"]


def test_100k_layout(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (raw / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n2|GoldenEye (1995)|x||y|0|1|0\n")
    (raw / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t3\t891717742\n")
    summary = import_movielens(raw, tmp_path / "out")
    assert (summary.layout, summary.items, summary.interactions) == ("100k", 2, 2)
    assert {i.id: i.tags for i in read_items(tmp_path / "out")} == {"1": ["Comedy"], "2": ["Action"]}


def test_unknown_layout_is_a_clear_cli_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no MovieLens layout"):
        import_movielens(tmp_path, tmp_path / "out")
    result = CliRunner().invoke(app, ["data", "import-movielens", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "no MovieLens layout" in result.output


def test_shared_ml_latest_small(tmp_path: Path) -> None:
    raw = shared_dataset("movielens-small-posters", "ml-latest-small")
    posters = shared_dataset("movielens-small-posters", "ml-1m-posters", "MovieImages")
    result = CliRunner().invoke(
        app, ["data", "import-movielens", str(raw), str(tmp_path / "ml"), "--posters", str(posters)]
    )
    assert result.exit_code == 0, result.output
    assert "9742 items (2947 with a cover), 100836 interactions" in result.output


def test_posters_that_match_no_movie_warn_and_fail_with_strict(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    wrong = _posters(tmp_path, ["999"])  # a folder of posters, none for this release's movies
    args = ["data", "import-movielens", str(raw), str(tmp_path / "out"), "--posters", str(wrong)]
    warned = CliRunner().invoke(app, args)
    assert warned.exit_code == 0 and "0 with a cover" in warned.output
    assert "warning: no file in" in warned.output and "named after a movie id" in warned.output
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2 and "error: no file in" in strict.output
    (tmp_path / "ok").mkdir()
    matched = CliRunner().invoke(app, [*args[:-1], str(_posters(tmp_path / "ok", ["1"])), "--strict"])
    assert matched.exit_code == 0 and "1 with a cover" in matched.output and "warning" not in matched.output
