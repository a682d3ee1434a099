"""Self-contained HTML reports (images and plots inlined as base64) for one run and for comparisons.

A report must open anywhere — mailed, uploaded as a CI artifact, opened offline — so nothing it shows
is linked: thumbnails (256 px on the long side; smaller images are scaled up, pixelated) and matplotlib
figures are embedded, and the styling is inline. A click on a thumbnail opens the full-size PNG through a
relative link, which works while the report sits beside its run folders. Values go through
`report_format` (one function per kind of value, all escaped), warnings appear once each with a count,
and test-mode stand-ins are labelled where their numbers appear: random FID weights ("RANDOM WEIGHTS")
and the tiny random tagger ("TOY TAGGER").
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from animegen.core.files import atomic_write
from animegen.evaluate.metrics import MetricError
from animegen.evaluate.report_format import (
    METRIC_NAMES,
    SETTING_LABELS,
    esc,
    fmt_number,
    fmt_setting,
    fmt_warnings,
    lora_text,
    setting_rows,
)

THUMB = 256
COMPARED_SETTINGS = ("model", "loras", "sampler", "steps", "cfg_scale", "resolved", "n_per_prompt", "seed")
TOY_TAGGER_NOTE = " — TOY TAGGER (random weights): its tags are noise, not a measurement"
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.warn{background:#fff6d6;border:1px solid #e0c060;padding:8px 12px;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0 18px}
.grid figure{margin:0;font-size:11px;color:#555;text-align:center}
.grid img{display:block;border:1px solid #ddd;image-rendering:pixelated}
.warn .count{font-weight:bold} .warn .src{color:#665}
ul.kv{list-style:none;margin:0;padding:0} ul.kv .k{color:#666}
code{background:#f3f3f3;padding:1px 4px}
"""


def image_data_uri(image: Image.Image | str | Path, size: int = THUMB) -> str:
    """A thumbnail as a `data:` URI (JPEG for photos would blur line art, so PNG)."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = im.convert("RGB")
    thumb = image.convert("RGB").copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail_html(path: Path, alt: str, report_dir: Path) -> str:
    """An embedded thumbnail shown THUMB px on its long side, linking to the full-size file."""
    with Image.open(path) as im:
        width, height = im.size
        uri = image_data_uri(im)
    scale = THUMB / max(width, height)
    href = quote(Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix())
    return (f"<a href='{esc(href)}' target='_blank'><img src='{uri}' width='{round(width * scale)}' "
            f"height='{round(height * scale)}' alt='{esc(alt)}'></a>")


def figure_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def metric_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(name, value, notes) rows of the headline metrics in a metrics.json `metrics` block."""
    rows = []
    if fid := metrics.get("fid"):
        ci = fid.get("ci") or {}
        val = fmt_number(fid["value"], 2)
        if ci:
            val += f" [{fmt_number(ci['low'], 2)}, {fmt_number(ci['high'], 2)}]"
        note = (f"{fid['n_real']} real / {fid['n_fake']} generated, mode {fid['mode']}, weights "
                f"{fid['weights']}")
        if not fid.get("comparable", True):
            note += " — RANDOM WEIGHTS: not comparable with any published FID"
        rows.append(("FID" + (f" ({int(ci['confidence'] * 100)}% CI)" if ci else ""), val, note))
    if kid := metrics.get("kid"):
        rows.append(("KID ×1000", f"{fmt_number(kid['mean'] * 1000, 3)} ± {fmt_number(kid['std'] * 1000, 3)}",
                     f"{kid['n_subsets']} subsets of {kid['subset_size']}"))
    if clip := metrics.get("clip_score"):
        rows.append(("CLIP score", f"{fmt_number(clip['mean'], 2)} ± {fmt_number(clip['std'], 2)}",
                     f"model {clip['model']}, {clip['n']} images"))
    if tags := metrics.get("tag_adherence"):
        o = tags["overall"]
        toy = TOY_TAGGER_NOTE if tags.get("toy_tagger") else ""
        rows.append(("Tag recall", fmt_number(o["recall"]), f"{o['hits']}/{o['support']} prompt tags found{toy}"))
        rows.append(("Tag precision", fmt_number(o["precision"]),
                     f"{o['hits']}/{o['detected']} detections asked for{toy}"))
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1,
           numeric_to: int | None = None) -> str:
    """HTML table; cells are already escaped; columns numeric_from..numeric_to-1 are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    end = numeric_to if numeric_to is not None else 1 << 30
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{c}</td>" if numeric_from <= i < end else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _run_plots(data: dict) -> list[str]:
    plt = _plt()
    plots = []
    prompts = data.get("per_prompt", [])
    scores = [p.get("clip_score") for p in prompts]
    if prompts and any(s is not None for s in scores):
        fig, ax = plt.subplots(figsize=(max(4, len(prompts) * 0.6 + 2), 3))
        ax.bar(range(len(prompts)), [s if s is not None else 0 for s in scores], color="#4a7fb5")
        ax.set_xticks(range(len(prompts)), [f"#{i}" for i in range(len(prompts))])
        ax.set_ylabel("CLIP score")
        ax.set_title("CLIP score per prompt")
        plots.append(figure_data_uri(fig))
    tags = data.get("metrics", {}).get("tag_adherence")
    if tags and tags.get("per_category"):
        cats = list(tags["per_category"])
        rec = [tags["per_category"][c]["recall"] or 0 for c in cats]
        prec = [tags["per_category"][c]["precision"] or 0 for c in cats]
        fig, ax = plt.subplots(figsize=(max(4, len(cats) * 1.2 + 1), 3))
        xs = range(len(cats))
        ax.bar([x - 0.2 for x in xs], rec, width=0.4, label="recall")
        ax.bar([x + 0.2 for x in xs], prec, width=0.4, label="precision")
        ax.set_xticks(list(xs), cats)
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title("Tag adherence per category")
        plots.append(figure_data_uri(fig))
    clip = data.get("metrics", {}).get("clip_score")
    if clip and clip.get("per_image") and len(clip["per_image"]) > 1:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.hist(clip["per_image"], bins=min(20, len(clip["per_image"])), color="#7a5fb5")
        ax.set_xlabel("CLIP score")
        ax.set_title("CLIP score distribution")
        plots.append(figure_data_uri(fig))
    return plots


def write_run_report(run_dir: str | Path, data: dict | None = None, out: str | Path | None = None) -> Path:
    """Write `report.html` for a run folder holding `metrics.json` and its images."""
    run_dir = Path(run_dir)
    data = data if data is not None else load_metrics(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    run = data.get("run", {})
    parts = [f"<h1>animegen eval — {esc(run.get('model', run_dir.name))}</h1>"]
    parts.append("<h2>Run</h2>" + _table(["setting", "value"], setting_rows(run), numeric_from=2))
    parts.append("<h2>Metrics</h2>")
    rows = [(esc(n), v, esc(note)) for n, v, note in metric_rows(data.get("metrics", {}))]
    parts.append(_table(["metric", "value", "notes"], rows, numeric_from=1, numeric_to=2) if rows
                 else "<p>No metric could be computed.</p>")
    for name, why in data.get("skipped", {}).items():
        parts.append(f"<p>Not computed: <b>{esc(METRIC_NAMES.get(name, name))}</b> — {esc(why)}</p>")
    parts.append(fmt_warnings(data.get("warnings", [])))
    tags = data.get("metrics", {}).get("tag_adherence")
    if tags:
        parts.append("<h2>Tag adherence</h2>")
        if tags.get("tagger"):
            parts.append(f"<p>Tagger <code>{esc(tags['tagger'])}</code>"
                         + (f"<b>{esc(TOY_TAGGER_NOTE)}</b>" if tags.get("toy_tagger") else "") + "</p>")
        cat_rows = [(esc(c), str(v["tags"]), fmt_number(v["recall"]), fmt_number(v["precision"]),
                     f"{v['hits']}/{v['support']}") for c, v in tags["per_category"].items()]
        parts.append(_table(["category", "tags", "recall", "precision", "hits/asked"], cat_rows))
        tag_rows = [(esc(t), esc(v["category"]), fmt_number(v["recall"]), fmt_number(v["precision"]),
                     f"{v['hits']}/{v['support']}", str(v["detected"]))
                    for t, v in tags["per_tag"].items()]
        parts.append("<details><summary>per tag</summary>"
                     + _table(["tag", "category", "recall", "precision", "hits/asked", "detected"], tag_rows, 2)
                     + "</details>")
        if tags.get("ignored_tags"):
            parts.append(f"<p>Not scored (no tagger can see them): {esc(', '.join(tags['ignored_tags']))}</p>")
    plots = _run_plots(data)
    if plots:
        parts.append("<h2>Plots</h2>" + "".join(f"<img src='{p}' alt='plot'> " for p in plots))
    parts.append("<h2>Per prompt</h2>")
    pp_rows = []
    for i, p in enumerate(data.get("per_prompt", [])):
        missing = ", ".join(f"{t} ({n})" for t, n in (p.get("missing_tags") or {}).items())
        pp_rows.append((f"#{i}", esc(p["prompt"]), str(len(p["images"])), fmt_number(p.get("clip_score"), 2),
                        fmt_number(p.get("tag_recall")), esc(missing) or "—"))
    parts.append(_table(["#", "prompt", "images", "CLIP score", "tag recall", "missing tags (images)"],
                        pp_rows, numeric_from=2, numeric_to=5))
    for i, p in enumerate(data.get("per_prompt", [])):
        parts.append(f"<h3>#{i}: {esc(_short(p['prompt'], 120))}</h3><div class='grid'>")
        for img in p["images"]:
            path = run_dir / img["file"]
            if path.is_file():
                parts.append(f"<figure>{thumbnail_html(path, img['file'], out.parent)}"
                             f"<figcaption>seed {esc(img.get('seed', '?'))}</figcaption></figure>")
        parts.append("</div>")
    _write_html(out, f"animegen eval — {run.get('model', '')}", parts)
    return out


def load_metrics(run_dir: str | Path) -> dict:
    """Read a run's metrics.json with a clear error when the folder is not an eval run."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise MetricError(f"'{run_dir}' is not an eval run folder (no metrics.json); "
                          "create one with `animegen eval run`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MetricError(f"'{path}' is not valid JSON: {err}") from err


def _write_html(out: Path, title: str, parts: Sequence[str]) -> None:
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write(out, doc)


def _label(run_dir: Path, data: dict, others: Sequence[Path]) -> str:
    names = [p.name for p in others]
    label = run_dir.name if names.count(run_dir.name) == 1 else str(run_dir)
    loras = data.get("run", {}).get("loras") or []
    if loras:
        label += " — " + ", ".join(lora_text(path, weight) for path, weight in loras)
    return label


def _compare_plots(labels: list[str], runs: list[dict]) -> list[str]:
    plt = _plt()
    series = {
        "FID": [((r["metrics"].get("fid") or {}).get("value"), (r["metrics"].get("fid") or {}).get("ci"))
                for r in runs],
        "KID ×1000": [(k["mean"] * 1000, k["std"] * 1000) if (k := r["metrics"].get("kid")) else (None, None)
                      for r in runs],
        "CLIP score": [(c["mean"], c["std"]) if (c := r["metrics"].get("clip_score")) else (None, None)
                       for r in runs],
        "tag recall": [((t := r["metrics"].get("tag_adherence")) and t["overall"]["recall"], None)
                       for r in runs],
    }
    plots = []
    for name, values in series.items():
        if all(v is None for v, _ in values):
            continue
        xs = [i for i, (v, _) in enumerate(values) if v is not None]
        ys = [values[i][0] for i in xs]
        err = None
        if name == "FID" and all(values[i][1] for i in xs):
            err = [[ys[j] - values[i][1]["low"] for j, i in enumerate(xs)],
                   [values[i][1]["high"] - ys[j] for j, i in enumerate(xs)]]
        elif name in ("KID ×1000", "CLIP score"):
            err = [values[i][1] for i in xs]
        fig, ax = plt.subplots(figsize=(max(4, len(labels) * 1.1 + 1), 3))
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=4)
        ax.set_xticks(range(len(labels)), [_short(lb, 24) for lb in labels], rotation=20, ha="right")
        ax.set_title(name)
        plots.append(figure_data_uri(fig))
    return plots


def write_compare_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Side-by-side table, plots and same-seed image rows of several eval runs; returns the HTML path."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise MetricError("compare needs at least two run folders")
    runs = [load_metrics(d) for d in dirs]
    labels = [_label(d, r, dirs) for d, r in zip(dirs, runs)]
    out = Path(out)
    out_file = out if out.suffix == ".html" else out / "compare.html"
    table_rows: dict[str, list[str]] = {}
    for i, r in enumerate(runs):
        for name, value, _note in metric_rows(r.get("metrics", {})):
            table_rows.setdefault(name, ["—"] * len(runs))[i] = value
    parts = ["<h1>animegen eval — comparison</h1>",
             _table(["metric", *labels], [(esc(n), *v) for n, v in table_rows.items()]) if table_rows
             else "<p>None of the runs has metrics.</p>"]
    settings = [k for k in COMPARED_SETTINGS if any(k in r.get("run", {}) for r in runs)]
    if settings:
        rows = [(esc(SETTING_LABELS[k]), *(fmt_setting(k, r.get("run", {}).get(k)) for r in runs)) for k in settings]
        parts.append("<h2>Runs</h2>" + _table(["setting", *labels], rows, numeric_from=len(labels) + 1))
    notes = [(w, lb) for lb, r in zip(labels, runs) for w in r.get("warnings", [])]
    fids = [r["metrics"].get("fid") for r in runs if r["metrics"].get("fid")]
    if len({(f["n_real"], f["n_fake"], f["mode"], f["weights"]) for f in fids}) > 1:
        mixed = ("FIDs below were computed with different set sizes, modes or weights: they are not comparable "
                 "with each other.")
        notes.insert(0, (mixed, None))
    parts.append(fmt_warnings(notes, everyone=labels))
    parts.append("".join(f"<img src='{p}' alt='plot'> " for p in _compare_plots(labels, runs)))
    prompt_rows = []
    all_prompts = list(dict.fromkeys(p["prompt"] for r in runs for p in r.get("per_prompt", [])))
    for prompt in all_prompts:
        row = [esc(_short(prompt, 80))]
        for r in runs:
            match = next((p for p in r.get("per_prompt", []) if p["prompt"] == prompt), None)
            row.append(fmt_number(match.get("clip_score"), 2) + " / " + fmt_number(match.get("tag_recall"))
                       if match else "—")
        prompt_rows.append(row)
    if prompt_rows:
        parts.append("<h2>Per prompt (CLIP score / tag recall)</h2>" + _table(["prompt", *labels], prompt_rows))
        parts.append("<h2>Images (first image of each prompt)</h2>")
        for prompt in all_prompts:
            parts.append(f"<h3>{esc(_short(prompt, 120))}</h3><div class='grid'>")
            for d, r, lb in zip(dirs, runs, labels):
                match = next((p for p in r.get("per_prompt", []) if p["prompt"] == prompt), None)
                if match and match["images"] and (d / match["images"][0]["file"]).is_file():
                    thumb = thumbnail_html(d / match["images"][0]["file"], lb, out_file.parent)
                    parts.append(f"<figure>{thumb}<figcaption>{esc(lb)}</figcaption></figure>")
            parts.append("</div>")
    _write_html(out_file, "animegen eval comparison", parts)
    summary = {"runs": [{"dir": str(d), "label": lb, "metrics": {k: v for k, v in r["metrics"].items()
                                                                 if k != "tag_adherence"}}
                        for d, lb, r in zip(dirs, labels, runs)]}
    atomic_write(out_file.parent / "compare.json", json.dumps(summary, indent=2, default=str))
    return out_file
