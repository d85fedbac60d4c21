"""`mmrecall bench scaling --out DIR`: the scaling curve from perf results at several catalogue sizes.

Reads DIR/perf-10k.json, DIR/perf-100k.json, DIR/perf-1m.json (copies of `bench perf --scale S`
outputs), plots query latency and reindex time against the number of items, and writes
DIR/scaling.json and DIR/scaling.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmrecall.benchmarks.common import table, write_result

SCALES = ("10k", "100k", "1m")
COLUMNS = ("items", "similar_p99_ms", "recall_p99_ms", "personal_ann_p99_ms", "reindex_s", "reindex_peak_gb")


def load(directory: Path) -> list[dict]:
    rows = []
    for scale in SCALES:
        path = directory / f"perf-{scale}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            rows.append({"scale": scale, **{c: result.get(c) for c in COLUMNS}})
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [r["items"] for r in rows]
    fig, (latency, reindex) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (
        ("similar_p99_ms", "/v1/similar p99"),
        ("recall_p99_ms", "/v1/recall p99 (all channels)"),
        ("personal_ann_p99_ms", "personal ANN p99 (one query)"),
    ):
        latency.plot(items, [r[key] for r in rows], marker="o", label=label)
    latency.set(
        xscale="log",
        yscale="log",
        xlabel="items in the catalogue",
        ylabel="ms",
        title="Query latency (8 clients on loopback, 2 cores)",
    )
    latency.legend(fontsize=8)
    reindex.plot(items, [r["reindex_s"] for r in rows], marker="o", color="tab:red", label="reindex s")
    reindex.set(
        xscale="log",
        yscale="log",
        xlabel="items in the catalogue",
        ylabel="seconds",
        title="Reindex (ANN + k-means + v2v top-100 table)",
    )
    for r in rows:
        reindex.annotate(
            f"{r['reindex_peak_gb']:.1f} GB peak",
            (r["items"], r["reindex_s"]),
            fontsize=8,
            textcoords="offset points",
            xytext=(4, -12),
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out: Path, **_kw) -> dict:
    rows = load(out)
    if len(rows) < 2:
        raise SystemExit(f"need perf-<scale>.json for at least two of {SCALES} in {out}")
    print(table(rows, ["scale", *COLUMNS]))
    plot(rows, out / "scaling.png")
    write_result(out, "scaling", {"rows": rows})
    return {"rows": rows}
