"""The sweep's outputs: sweep.csv, sweep_summary.csv, sweep.md and sweep.png (also PDF and SVG), and the figure
helpers the protocol's outputs share (write_figure, plot_matrix)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mdpl.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# one line style and marker per backbone when a figure's groups span several backbones (else every line is solid)
BACKBONE_STYLES = {"vilt": ("-", "o"), "clip": ("--", "s")}
OTHER_STYLES = ((":", "^"), ("-.", "D"))  # backbones not named above, in order of appearance
# a group label: method, optional "@backbone", then anything (" (learning_rate=0.01)", ":runA/last", " #2")
_LABEL = re.compile(r"(?P<method>[^\s@:#(]*)(?:@(?P<backbone>[^\s:#(]+))?(?P<rest>.*)", re.DOTALL)
FIGURE_FORMATS = ("png", "pdf", "svg")

# fontTools notes each table it prunes while embedding the PDF's fonts: nothing a user can act on
logging.getLogger("fontTools").setLevel(logging.WARNING)


def csv_bytes(rows: list[dict]) -> bytes:
    """Rows as CSV, the columns in order of first appearance."""
    fields_ = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields_, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _group_of(row: dict) -> str:
    return row.get("group") or row["label"].rsplit("/", 1)[0]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (group, missing type, ratio), in first-appearance order: the_metric's mean and std over the group's
    checkpoints (fractions, like sweep.csv), with the effective missing rate and test sample count."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((_group_of(row), row["missing_type"], float(row["missing_ratio"])), []).append(row)
    out = []
    types = list(dict.fromkeys(r["missing_type"] for r in rows))
    for group in dict.fromkeys(k[0] for k in cells):
        for key in sorted((k for k in cells if k[0] == group), key=lambda k: (types.index(k[1]), k[2])):
            members = cells[key]
            mean, std = _mean_std([float(r["the_metric"]) for r in members])
            rates = [
                float(r["effective_missing_rate"])
                for r in members
                if r.get("effective_missing_rate") != "" and r.get("effective_missing_rate") is not None
            ]
            samples = sorted({int(r["test_samples"]) for r in members if r.get("test_samples") not in (None, "")})
            out.append(
                {
                    "group": group,
                    "missing_type": key[1],
                    "missing_ratio": key[2],
                    "n": len(members),
                    "the_metric_mean": mean,
                    "the_metric_std": std,
                    "effective_missing_rate": sum(rates) / len(rates) if rates else "",
                    "test_samples": samples[0] if len(samples) == 1 else "/".join(map(str, samples)),
                    "checkpoints": ";".join(dict.fromkeys(r["checkpoint"] for r in members)),
                }
            )
    return out


def line_averages(rows: list[dict]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(group, type) -> (mean, std, n) over the group's checkpoints of each checkpoint's the_metric averaged
    over the ratio grid (the paper's "average performance")."""
    per_ckpt: dict[tuple, list[float]] = {}
    for row in rows:
        per_ckpt.setdefault((_group_of(row), row["missing_type"], row["checkpoint"]), []).append(
            float(row["the_metric"])
        )
    per_line: dict[tuple, list[float]] = {}
    for (group, missing_type, _), values in per_ckpt.items():
        per_line.setdefault((group, missing_type), []).append(sum(values) / len(values))
    return {k: (*_mean_std(v), len(v)) for k, v in per_line.items()}


def _samples_text(summary: list[dict]) -> str:
    counts = list(dict.fromkeys(str(s["test_samples"]) for s in summary if s.get("test_samples") != ""))
    return "/".join(counts) if counts else "?"


def label_parts(group: str) -> tuple[str, str]:
    """(colour key, backbone) of a group label: the label without its "@backbone" (one colour for a method on every
    backbone), and the backbone ("vilt" when unnamed). "dcp@clip (learning_rate=0.01)" -> ("dcp (learning_rate=0.01)",
    "clip")."""
    m = _LABEL.fullmatch(group)
    return m["method"] + m["rest"], m["backbone"] or "vilt"


def _line_styles(groups: list[str]) -> dict[str, tuple[str, str]]:
    """group -> (line style, marker): by backbone when the groups span several, else solid lines with circles."""
    backbones = list(dict.fromkeys(label_parts(g)[1] for g in groups))
    if len(backbones) == 1:
        return {g: ("-", "o") for g in groups}
    others = itertools.cycle(OTHER_STYLES)
    style = {b: BACKBONE_STYLES.get(b) or next(others) for b in backbones}
    return {g: style[label_parts(g)[1]] for g in groups}


def _colours(groups: list[str]) -> dict[str, tuple]:
    """group -> colour: one per colour key (label_parts), in order of appearance."""
    import matplotlib  # optional heavy import: only drawing a plot pays for it

    keys = list(dict.fromkeys(label_parts(g)[0] for g in groups))
    palette = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"].colors
    return {g: palette[keys.index(label_parts(g)[0]) % len(palette)] for g in groups}


def plot_sweep(summary: list[dict], metric_title: str) -> Figure:
    """the_metric (%) against the missing ratio, one panel per missing type (shared y axis). In a panel, one line
    per group: one colour per method (label_parts), and when the groups span several backbones one line style and
    marker per backbone (ViLT solid, CLIP dashed); the group mean, with a mean ± std band for groups of several
    checkpoints. Lines are shifted by small x offsets so that none hides another."""
    from matplotlib.figure import Figure  # optional heavy import: only drawing a plot pays for it

    groups = list(dict.fromkeys(s["group"] for s in summary))
    types = list(dict.fromkeys(s["missing_type"] for s in summary))
    ratios = sorted({s["missing_ratio"] for s in summary})
    colours, styles = _colours(groups), _line_styles(groups)
    gap = min((b - a for a, b in zip(ratios, ratios[1:])), default=1.0)
    span = (ratios[-1] - ratios[0]) or 1.0
    step = min(0.3 * gap, 0.04 * span) / max(len(groups) - 1, 1)  # offsets within 30% of the grid step, 4% of x

    fig = Figure(figsize=(max(6.0, 3.3 * len(types) + 2.6), 3.9), layout="constrained")
    axes = fig.subplots(1, len(types), sharey=True, squeeze=False)[0]
    handles: dict[str, object] = {}
    for ax, missing_type in zip(axes, types):
        for i, group in enumerate(groups):
            points = sorted((s for s in summary if s["group"] == group and s["missing_type"] == missing_type),
                            key=lambda s: s["missing_ratio"])  # fmt: skip
            if points:
                shift = (i - (len(groups) - 1) / 2) * step
                handles.setdefault(group, _draw_line(ax, points, shift, colours[group], styles[group]))
        if len(ratios) <= 12:
            ax.set_xticks(ratios)
        ax.set_title(f"{missing_type} missing")
        ax.set_xlabel("missing ratio")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric_title} (%)")
    fig.suptitle(f"{metric_title} on the test split ({_samples_text(summary)} test samples)")
    fig.legend(list(handles.values()), [_legend_label(g, summary) for g in handles], loc="outside right upper",
               fontsize="small")  # fmt: skip
    return fig


def _legend_label(group: str, summary: list[dict]) -> str:
    n = max(s["n"] for s in summary if s["group"] == group)
    return group + (f" (mean ± std of {n})" if n > 1 else "")


def _draw_line(ax, points: list[dict], shift: float, colour: tuple, style: tuple[str, str]):
    """One group's mean line in a panel (and its ± std band when it has several checkpoints); returns the line."""
    xs = [s["missing_ratio"] + shift for s in points]
    mean = [s["the_metric_mean"] * 100 for s in points]
    std = [s["the_metric_std"] * 100 for s in points]
    [line] = ax.plot(xs, mean, linestyle=style[0], marker=style[1], color=colour, alpha=0.9, markersize=5)
    if max(s["n"] for s in points) > 1:
        low, high = [max(m - s, 0) for m, s in zip(mean, std)], [min(m + s, 100) for m, s in zip(mean, std)]
        ax.fill_between(xs, low, high, color=colour, alpha=0.12, linewidth=0)
    return line


def write_figure(fig: Figure, out_dir: Path, stem: str) -> None:
    """The figure as stem.png, stem.pdf and stem.svg in out_dir, each written atomically. Fonts
    are embedded as TrueType in the PDF (publishers refuse Type 3) and kept as text in the SVG (editable), and no
    creation date is written, so the same figure gives the same files."""
    import matplotlib  # optional heavy import: only drawing a plot pays for it

    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "mdpl"}):
        for fmt in FIGURE_FORMATS:
            buf = io.BytesIO()
            metadata = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
            fig.savefig(buf, format=fmt, dpi=150, metadata=metadata)
            write_atomic(out_dir / f"{stem}.{fmt}", buf.getvalue())


def plot_matrix(values: list[list[float]], rows: list[str], cols: list[str], title: str, value_label: str) -> Figure:
    """A heat-map of `values` (rows x cols, e.g. % per training x test case), each cell annotated with its value;
    the last row and column are averages, set apart by white lines (the protocol's matrix)."""
    from matplotlib.figure import Figure  # optional heavy import: only drawing a plot pays for it

    fig = Figure(figsize=(1.25 * len(cols) + 2.6, 0.75 * len(rows) + 1.7), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=value_label)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            dark = image.norm(value) < 0.55  # viridis is dark at its low end: white text there
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if dark else "black")
    ax.axhline(len(rows) - 1.5, color="white", linewidth=3)
    ax.axvline(len(cols) - 1.5, color="white", linewidth=3)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested with")
    ax.set_ylabel("trained with")
    ax.set_title(title)
    return fig


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[dict], summary: list[dict], metric_title: str, tasks: tuple[str, ...] = ()) -> str:
    """sweep.md: the_metric in % (mean ± std over each line's checkpoints) per ratio, then each line's
    average over the ratio grid, the groups and (MM-IMDb) the effective missing rates."""
    groups = list(dict.fromkeys(s["group"] for s in summary))
    types = list(dict.fromkeys(s["missing_type"] for s in summary))
    ratios = sorted({s["missing_ratio"] for s in summary})
    cols = [(g, t) for g in groups for t in types if any(s["group"] == g and s["missing_type"] == t for s in summary)]
    cell = {(s["group"], s["missing_type"], s["missing_ratio"]): s for s in summary}
    lines = [
        f"{metric_title} (%) on the test split ({_samples_text(summary)} test samples), by missing ratio: "
        "mean ± std over each line's checkpoints (sample std; 0 for one checkpoint)",
        "",
        "| missing ratio | " + " | ".join(_cell(f"{g}/{t}") for g, t in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for ratio in ratios:
        cells = []
        for g, t in cols:
            s = cell.get((g, t, ratio))
            cells.append(f"{s['the_metric_mean'] * 100:.2f} ± {s['the_metric_std'] * 100:.2f}" if s else "")
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
    avg = line_averages(rows)
    lines.append("| average | " + " | ".join(f"{avg[c][0] * 100:.2f} ± {avg[c][1] * 100:.2f}" for c in cols) + " |")
    lines += [
        "",
        f"average: each line's {metric_title} averaged over the {len(ratios)} missing ratios "
        "(average performance), mean ± std over its checkpoints.",
        "",
        "Lines (group: checkpoints):",
        "",
    ]
    for g in groups:
        ckpts = list(dict.fromkeys(r["checkpoint"] for r in rows if _group_of(r) == g))
        own = [r for r in rows if _group_of(r) == g and r.get("seed") not in ("", None)]
        seeds = list(dict.fromkeys(str(r["seed"]) for r in own))
        seed_text = f", seeds {', '.join(seeds)}" if seeds and len(ckpts) > 1 else ""
        lines.append(
            f"- {_cell(g)} ({len(ckpts)} checkpoint{'s' * (len(ckpts) > 1)}{seed_text}): "
            + ", ".join(f"`{c}`" for c in ckpts)
        )
    if "mmimdb" in tasks:
        rate = {}
        for s in summary:
            if s["effective_missing_rate"] != "":
                rate.setdefault((s["missing_type"], s["missing_ratio"]), s["effective_missing_rate"])
        lines += [
            "",
            "Effective missing rate (% of test samples missing a modality): MM-IMDb's missing table is "
            "drawn per movie, but each plot is a sample.",
            "",
            "| missing ratio | " + " | ".join(f"{t} missing" for t in types) + " |",
            "|---|" + "---|" * len(types),
        ]
        for ratio in ratios:
            values = [f"{rate[(t, ratio)] * 100:.1f}" if (t, ratio) in rate else "" for t in types]
            lines.append(f"| {ratio:g} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    rows: list[dict], out_dir: Path, metric_title: str, tasks: tuple[str, ...] = (), record: dict | None = None
) -> str:
    """sweep.csv (every metric), sweep_summary.csv, sweep.md, sweep.png (also .pdf and .svg) and (given `record`)
    config.json, each written atomically into out_dir; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    write_atomic(out_dir / "sweep.csv", csv_bytes(rows))
    write_atomic(out_dir / "sweep_summary.csv", csv_bytes(summary))
    table = markdown(rows, summary, metric_title, tuple(tasks))
    write_atomic(out_dir / "sweep.md", table.encode())
    write_figure(plot_sweep(summary, metric_title), out_dir, "sweep")
    if record is not None:
        write_atomic(out_dir / "config.json", (json.dumps(record, indent=2, default=str) + "\n").encode())
    return table


def read_rows(path: Path) -> list[dict]:
    """sweep.csv back as rows, numbers as floats (e.g. to redraw: plot_sweep(summarise(rows), title))."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key not in ("checkpoint", "prompt_method", "label", "missing_type", "group", "seed") and value != "":
                try:
                    row[key] = float(value)
                except ValueError:
                    pass
    return rows
