"""The ablation report: results.csv, summary.csv, report.md and its PNG plots, each written
to a temporary file and renamed, so that a kill leaves the old file or the new one."""

from __future__ import annotations

import csv
import io
import os
import statistics
from collections import Counter
from pathlib import Path

import torch

from vit.studies.ablation import Run, paired_differences, result_rows, summary_rows, varied_differences
from vit.studies.evaluation import model_from_checkpoint
from vit.training.run_log import write_atomic
from vit.training.similarity_image import plt, similarity_mosaic


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """fig as a PNG at path, atomically, and closed."""
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def by_label(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.status == "finished":
            groups.setdefault(run.label, []).append(run)
    return groups


def save_axes(fig, ax, path: Path, **labels) -> None:
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(runs: list[Run], path: Path) -> None:
    """Validation accuracy against epoch: the mean over seeds, with a band from min to max."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in by_label(runs).items():
        scored = [[r for r in run.history if "val_acc1" in r] for run in group]  # trainer.eval_every
        acc = torch.tensor([[r["val_acc1"] for r in records] for records in scored])
        epochs = [r["epoch"] for r in scored[0]]
        line = ax.plot(epochs, acc.mean(0), label=f"{label} (n={len(group)})")[0]
        if len(group) > 1:
            ax.fill_between(epochs, acc.min(0).values, acc.max(0).values, color=line.get_color(), alpha=0.2)
    save_axes(fig, ax, path, xlabel="epoch", ylabel="validation top-1 (%)", title="Validation accuracy")


def plot_resolutions(runs: list[Run], path: Path) -> None:
    """Accuracy against test image size (no fine-tuning), mean over seeds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in by_label(runs).items():
        points = {group[0].evaluation["img_size"]: [r.evaluation["acc1"] for r in group]}
        for size in group[0].evaluation["acc1_at"]:
            points[int(size)] = [r.evaluation["acc1_at"][size] for r in group]
        sizes = sorted(points)
        ax.plot(sizes, [statistics.fmean(points[s]) for s in sizes], marker="o", label=label)
    train_size = next(iter(by_label(runs).values()))[0].evaluation["img_size"] if by_label(runs) else None
    if train_size:
        ax.axvline(train_size, color="grey", linestyle=":", label="training size")
    save_axes(fig, ax, path, xlabel="test image size (px)", ylabel="top-1 (%)", title="Accuracy at other resolutions")


def plot_similarity(runs: list[Run], path: Path) -> bool:
    """The position-similarity maps of the schemes that have a table, side by side (each
    scheme's first run whose weights this machine has)."""
    panels = []
    for label, group in by_label(runs).items():
        weights = [p for p in (r.folder / "checkpoints" / "last.pt" for r in group) if p.exists()]
        if not weights:  # runs known from their committed rows alone
            continue
        model, _, _ = model_from_checkpoint(weights[0])
        grid = model.grid_for(*model.img_size)
        table = model.pos_embed.position_table(grid)
        if table is not None:
            panels.append((label, similarity_mosaic(table, grid)))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (label, mosaic) in zip(axes[0], panels, strict=True):
        ax.imshow(mosaic.numpy(), cmap="viridis", vmin=float(mosaic.nan_to_num(1.0).min()), vmax=1)
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    fig.suptitle("cosine similarity of position embeddings (each tile: one position vs all)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_attention_distance(runs: list[Run], path: Path, columns: int = 0, colour=None, dpi: int = 120) -> bool:
    """Mean attention distance of every head against its block, a panel per scheme (the
    ViT paper's Figure 7, right), from each scheme's first finished run; one row of panels,
    or rows of `columns`; `colour(label)` picks a scheme's colour."""
    panels = [
        (label, group[0].evaluation["attention_distance_px"])
        for label, group in by_label(runs).items()
        if group and "attention_distance_px" in group[0].evaluation
    ]
    if not panels:
        return False
    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    size = (2.4 * columns, 2.8) if rows == 1 else (7, 2.4 * rows + 0.6)
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, sharey=True)
    top = max(max(max(block) for block in d) for _, d in panels) * 1.1
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (label, distances) in zip(axes.flat, panels, strict=False):
        for block, heads in enumerate(distances):
            ax.scatter([block + 1] * len(heads), heads, s=10, color=colour(label) if colour else None)
        ax.set_title(label, fontsize=8)
        ax.set_ylim(0, top)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean attention distance (px)", fontsize=7)
    for column in range(min(columns, len(panels))):  # under the lowest panel of each column
        axes[(len(panels) - 1 - column) // columns, column].set_xlabel("block", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi)
    return True


def fmt(row: dict, key: str) -> str:
    """mean ± the 95% interval's half-width (over seeds); the mean alone for one seed."""
    if f"{key}_mean" not in row:
        return "–"
    if row["seeds"] < 2:
        return f"{row[f'{key}_mean']:.2f}"
    return f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_ci95']:.2f}"


def differences_section(pairs: list[dict]) -> list[str]:
    """The paired differences in final top-1 against each baseline, and which are resolved."""
    if not pairs:
        return []
    baselines = list(dict.fromkeys(p["baseline"] for p in pairs))
    labels = list(dict.fromkeys(p["label"] for p in pairs))
    cell = {(p["label"], p["baseline"]): p for p in pairs}
    lines = [
        "## Paired differences",
        "",
        "Final top-1 minus the baseline's, run by run over the same seeds, in points: "
        "mean ± 95% interval (Student's t); **bold** where the interval excludes zero.",
        "",
    ]
    lines += ["| scheme | " + " | ".join(f"vs {b}" for b in baselines) + " |", "|" + " --- |" * (len(baselines) + 1)]
    for label in labels:
        cells = []
        for b in baselines:
            p = cell.get((label, b))
            text = "–" if p is None else f"{p['mean']:+.2f}" + (f" ± {p['ci95']:.2f}" if p["n"] > 1 else " (1 seed)")
            cells.append(f"**{text}**" if p is not None and p["resolved"] else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for b in baselines:
        ahead = [p["label"] for p in pairs if p["baseline"] == b and p["resolved"] and p["mean"] > 0]
        behind = [p["label"] for p in pairs if p["baseline"] == b and p["resolved"] and p["mean"] < 0]
        open_ = [p["label"] for p in pairs if p["baseline"] == b and not p["resolved"]]
        ahead, behind, open_ = (", ".join(names) or "no scheme" for names in (ahead, behind, open_))
        lines += ["", f"Against {b}: resolved ahead: {ahead}; resolved behind: {behind}; not resolved: {open_}."]
        lines += holm_sentence([p for p in pairs if p["baseline"] == b], f"against {b}")
    return [*lines, ""]


def holm_sentence(family: list[dict], what: str) -> list[str]:
    """Which resolved differences survive Holm's correction for the family's size: each
    interval above is for one comparison alone, and with many, some exclude zero by chance."""
    tested = [p for p in family if p["n"] > 1]
    if len(tested) < 2 or not any(p["resolved"] for p in tested):
        return []
    kept = ", ".join(f"`{p['label']}`" for p in tested if p["holm"]) or "no comparison"
    lost = [f"`{p['label']}`" for p in tested if p["resolved"] and not p["holm"]]
    text = f"Corrected for all {len(tested)} comparisons {what} (Holm, 5% family-wise): still resolved: {kept}"
    return ["", text + (f"; no longer: {', '.join(lost)}." if lost else ".")]


def varied_section(pairs: list[dict]) -> list[str]:
    """For a grid with a varied key (model.pool: cls, gap): each value against the first, scheme
    by scheme, paired over the seeds."""
    if not pairs:
        return []
    lines = ["## Along the varied keys", ""]
    lines += [
        "Final top-1 at each value minus the same scheme's at the first value, seed by seed, in points: "
        "mean ± 95% interval; **bold** where the interval excludes zero."
        + (
            " *every scheme* pools all the schemes' pairs: the change averaged over them."
            if any(p.get("pooled") for p in pairs)
            else ""
        ),
        "",
        "| scheme | change | difference |",
        "| --- | --- | --- |",
    ]
    for p in pairs:
        text = f"{p['mean']:+.2f}" + (f" ± {p['ci95']:.2f}" if p["n"] > 1 else " (1 seed)")
        if p.get("pooled"):
            text += f" ({p['n']} pairs, {p['above']} above zero)"
        change = f"{p['key']}: {p['reference']} → {p['value']}"
        label = f"*{p['label']}*" if p.get("pooled") else p["label"]
        lines.append(f"| {label} | {change} | {f'**{text}**' if p['resolved'] else text} |")
    for along in dict.fromkeys((p["key"], p["reference"], p["value"]) for p in pairs):
        family = [p for p in pairs if (p["key"], p["reference"], p["value"]) == along and not p.get("pooled")]
        lines += holm_sentence(family, f"of {along[0]}: {along[1]} → {along[2]}")
    return [*lines, ""]


def reading(summary: list[dict], runs: list[Run]) -> list[str]:
    """A few plain sentences on what the table says, measured against the seed spread."""
    rows = [r for r in summary if r["seeds"]]
    if len(rows) < 2:
        return ["Too few finished runs to compare."]
    lines = []
    ranked = sorted(rows, key=lambda r: -r["final_acc1_mean"])
    best, second = ranked[0], ranked[1]
    gap = best["final_acc1_mean"] - second["final_acc1_mean"]
    if best["seeds"] < 2:
        verdict = "from a single seed, so the spread is unknown"
    elif gap <= best["final_acc1_ci95"] + second["final_acc1_ci95"]:
        verdict = "their 95% intervals overlap, not a clear difference"
    else:
        verdict = "their 95% intervals do not overlap"
    tied = [r["label"] for r in ranked[1:] if r["final_acc1_mean"] == best["final_acc1_mean"]]
    if tied:
        lines.append(
            f"At the training resolution {', '.join([best['label'], *tied])} tie at {best['final_acc1_mean']:.2f}%."
        )
    else:
        lines.append(
            f"At the training resolution **{best['label']}** is best ({fmt(best, 'final_acc1')}%), "
            f"{gap:.2f} points ahead of {second['label']}: {verdict}."
        )
    none = [r for r in rows if r["label"].split()[0] == "none"]
    if none:
        weakest = min(
            (r for r in rows if r["label"].split()[0] != "none"), key=lambda r: r["final_acc1_mean"], default=None
        )
        if weakest:
            gap = weakest["final_acc1_mean"] - none[0]["final_acc1_mean"]
            lines.append(
                f"Without positions the model reaches {none[0]['final_acc1_mean']:.2f}%, "
                f"{abs(gap):.2f} points {'below' if gap >= 0 else 'above'} the weakest scheme with "
                f"positions ({weakest['label']})."
            )
    away = [k[:-5] for k in rows[0] if k.startswith("acc1_at_") and k.endswith("_mean")]
    if away:
        robust = max(rows, key=lambda r: statistics.fmean(r[f"{k}_mean"] for k in away))
        lines.append(
            f"Away from the training size ({', '.join(k.split('_')[-1] for k in away)}) "
            f"**{robust['label']}** holds up best, averaging "
            f"{statistics.fmean(robust[f'{k}_mean'] for k in away):.2f}%."
        )
    drops = {r["label"]: r["final_acc1_mean"] - r["shuffled_acc1_mean"] for r in rows if "shuffled_acc1_mean" in r}
    if drops:
        most = max(drops, key=drops.get)
        lines.append(
            f"Shuffling the patches costs {most} the most ({drops[most]:.2f} points): the more a model "
            f"drops, the more it relies on where patches are. "
            + ", ".join(f"{k}: {v:.2f}" for k, v in drops.items())
            + "."
        )
    return lines


def threads_note(runs: list[Run]) -> str:
    """A line when the finished runs trained on different thread counts (as recorded in their
    summaries): like two CPUs, two thread counts part the same seed, so pairs across them are looser."""
    recorded = [r.summary.get("threads") for r in runs if r.status == "finished"]
    counts = Counter(t for t in recorded if not isinstance(t, list))  # a list: resumed on another count
    known = sorted((t, n) for t, n in counts.items() if t is not None)
    changed = sum(isinstance(t, list) for t in recorded)
    if len(known) < 2 and not changed:  # one count throughout (a run resumed on another is mixed itself)
        return ""
    parts = [f"{n} on {t} thread{'s' * (t != 1)}" for t, n in known]
    parts += [f"{changed} resumed on another count"] if changed else []
    parts += [f"{counts[None]} not recorded"] if counts[None] else []
    return (
        f"These runs trained on different thread counts ({', '.join(parts)}): the same seed on two "
        "thread counts parts as far as two seeds, so pairs across them are looser (set `jobs` as before)."
    )


def write_report(name: str, runs: list[Run], out: Path, command: str, note: str = "") -> Path:
    """results.csv, summary.csv, the plots, and report.md that shows them (`note` under the command)."""
    summary = summary_rows(runs)
    write_csv(out / "results.csv", result_rows(runs))
    write_csv(out / "summary.csv", summary)
    plot_curves(runs, out / "curves.png")
    plot_resolutions(runs, out / "resolutions.png")
    has_maps = plot_similarity(runs, out / "similarity.png")
    has_distances = plot_attention_distance(runs, out / "attention_distance.png")
    lines = [
        f"# Ablation `{name}`",
        "",
        f"Command: `{command}`",
        "",
        *[line for text in (note, threads_note(runs)) if text for line in (text, "")],
        "Mean ± the 95% confidence interval over seeds (Student's t), accuracies in percent; resolutions are test "
        'image sizes with no fine-tuning; "shuffled patches" permutes the patch tokens of each '
        "validation image, right after the patch embedding. images/s is each run's own training rate, which "
        "depends on the machine and on what trained beside it (`jobs`): compare speeds with "
        "`scripts/benchmark.py`, side by side in one process, not in this column.",
        "",
        *results_table(summary),
        "",
        "## Reading",
        "",
        *[f"- {s}" for s in reading(summary, runs)],
        "",
        *differences_section(paired_differences(runs)),
        *varied_section(varied_differences(runs)),
    ]
    failed = [r for r in runs if r.status != "finished"]
    if failed:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{r.folder.name}`: {r.status}" + (f": {r.error}" if r.error else "") for r in failed]
        lines.append("")
    lines += [
        "## Plots",
        "",
        "![validation accuracy](curves.png)",
        "",
        "![accuracy at other resolutions](resolutions.png)",
    ]
    lines += ["", "![position similarity](similarity.png)", ""] if has_maps else [""]
    lines += ["![mean attention distance per head and block](attention_distance.png)", ""] if has_distances else []
    lines += [
        "Per-run numbers: `results.csv`; per-scheme: `summary.csv`. "
        f"Curves of every run: `tensorboard --logdir {out}`.",
        "",
    ]
    write_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def results_table(summary: list[dict]) -> list[str]:
    """The markdown table: one row per scheme, a column per test resolution."""
    sizes = sorted(
        {k for r in summary for k in r if k.startswith("acc1_at_") and k.endswith("_mean")},
        key=lambda k: int(k.split("_")[2][:-2]),
    )
    header = ["scheme", "seeds", "final top-1", "best top-1", *[k.split("_")[2] for k in sizes]]
    header += ["shuffled patches", "scheme params", "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in summary:
        cells = [row["label"], str(row["seeds"]), fmt(row, "final_acc1"), fmt(row, "best_acc1")]
        cells += [fmt(row, k[:-5]) for k in sizes]
        cells += [
            fmt(row, "shuffled_acc1"),
            f"{row['scheme_params_mean']:,.0f}" if "scheme_params_mean" in row else "–",
            f"{row['images_per_sec_mean']:,.0f}" if "images_per_sec_mean" in row else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
