"""The figures of the README and docs/, drawn from the committed results alone (`results/`):
no model is trained or loaded, so `make figures` redraws all of them in seconds on a fresh
clone. Each function draws one PNG."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from vit import registry
from vit.studies import ablation, report, results
from vit.training.similarity_image import plt, similarity_mosaic

ROOT = Path(__file__).resolve().parents[2]
DPI = 110  # a 7-inch-wide figure is 770 px: the README's width on GitHub


@dataclass
class Scheme:
    """One scheme's figures in one regime: means over seeds, 95% intervals (nan for one seed)."""

    n: int
    acc: float
    ci: float
    vs_none: float = float("nan")
    vs_none_ci: float = float("nan")
    shuffled: float = float("nan")
    sizes: dict[int, float] = field(default_factory=dict)  # test size (px) -> top-1


@dataclass
class Regime:
    title: str
    schemes: dict[str, Scheme]


def number(text: str) -> float:
    return float(text) if text.strip() else float("nan")


def regime_from_table(path: Path, title: str, train_size: int = 28) -> Regime:
    """A study committed as its per-scheme table (means and intervals), e.g. fmnist_full.csv."""
    schemes = {}
    for row in csv.DictReader(open(path)):
        sizes = {int(k[len("acc1_at_") : -2]): number(v) for k, v in row.items() if k.startswith("acc1_at_")}
        acc = number(row["final_acc1_mean"])
        schemes[row["scheme"]] = Scheme(
            n=int(row["seeds"]),
            acc=acc,
            ci=number(row["final_acc1_ci95"]),
            vs_none=0.0 if row["scheme"] == "none" else number(row["vs_none_mean"]),
            vs_none_ci=number(row["vs_none_ci95"]),
            shuffled=number(row["shuffled_acc1"]),
            sizes={**sizes, train_size: acc},
        )
    return Regime(title, schemes)


def runs_from_rows(path: Path) -> list[ablation.Run]:
    """A study committed as per-run rows (results/ablations/NAME.jsonl)."""
    return [ablation.run_from_row(r["point"], Path(r["run"]), r) for r in results.read_rows(path)]


def regime_from_runs(runs: list[ablation.Run], title: str) -> Regime:
    groups = report.by_label(runs)
    diffs = {d["label"]: d for d in ablation.paired_differences(runs) if d["baseline"] == "none"}
    schemes = {}
    for label, group in groups.items():
        accs = [r.summary["final_val_acc1"] for r in group]
        sizes = {group[0].evaluation["img_size"]: statistics.fmean(accs)}
        for size in group[0].evaluation["acc1_at"]:
            sizes[int(size)] = statistics.fmean(r.evaluation["acc1_at"][size] for r in group)
        d = diffs.get(label, {"mean": 0.0 if label == "none" else float("nan"), "ci95": float("nan")})
        schemes[label] = Scheme(
            n=len(group),
            acc=statistics.fmean(accs),
            ci=ablation.ci95(accs),
            vs_none=d["mean"],
            vs_none_ci=d["ci95"],
            shuffled=statistics.fmean(r.evaluation["shuffled_acc1"] for r in group),
            sizes=sizes,
        )
    return Regime(title, schemes)


def ordered(regime: Regime) -> list[str]:
    """The registry's order (none and learned_1d first), for the schemes this regime has."""
    return [s for s in registry.schemes() if s in regime.schemes]


def colour(scheme: str) -> str:
    """The same colour for a scheme in every figure."""
    return f"C{registry.schemes().index(scheme) % 10}"


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def interval_panels(regimes: list[Regime], value, error, xlabel: str, path: Path, zero_line: bool = False) -> None:
    """A panel per regime: each scheme's value with its 95% interval as a horizontal bar."""
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        names = ordered(regime)[::-1]
        for y, name in enumerate(names):
            s = regime.schemes[name]
            ax.errorbar(value(s), y, xerr=error(s), fmt="o", color="C0" if s.n > 1 else "C1", capsize=3)
        ax.set_yticks(range(len(names)), [f"{n} (n={regime.schemes[n].n})" for n in names], fontsize=8)
        if zero_line:
            ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(regime.title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    save(fig, path)


def plot_schemes(regimes: list[Regime], path: Path) -> None:
    """Top-1 of each scheme with its 95% interval over seeds (orange: one seed, no interval)."""
    interval_panels(regimes, lambda s: s.acc, lambda s: 0 if s.ci != s.ci else s.ci, "test top-1 (%)", path)


def plot_paired(regimes: list[Regime], path: Path) -> None:
    """Each scheme minus `none`, run by run over the same seeds, with the 95% interval."""
    trimmed = [Regime(r.title, {k: v for k, v in r.schemes.items() if k != "none"}) for r in regimes]
    interval_panels(
        trimmed,
        lambda s: s.vs_none,
        lambda s: 0 if s.vs_none_ci != s.vs_none_ci else s.vs_none_ci,
        "top-1 minus none's, same seed (points)",
        path,
        zero_line=True,
    )


def plot_shuffled(regimes: list[Regime], path: Path) -> None:
    """What shuffling each image's tokens costs: how much each scheme uses position."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [s for s in registry.schemes() if any(s in r.schemes for r in regimes)]
    width = 0.8 / len(regimes)
    for i, regime in enumerate(regimes):
        drops = [regime.schemes[n].acc - regime.schemes[n].shuffled if n in regime.schemes else 0 for n in names]
        ax.bar([x + i * width for x in range(len(names))], drops, width, label=regime.title)
    ax.set_xticks([x + width * (len(regimes) - 1) / 2 for x in range(len(names))], names, rotation=30, fontsize=8)
    ax.set_ylabel("top-1 lost when tokens are shuffled (points)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def plot_sizes(regimes: list[Regime], path: Path) -> None:
    """Top-1 against the test image size, without fine-tuning; trained at 28 px."""
    fig, axes = plt.subplots(1, len(regimes), figsize=(3.6 * len(regimes), 3.4), squeeze=False, sharey=True)
    for ax, regime in zip(axes[0], regimes, strict=True):
        for name in ordered(regime):
            sizes = sorted(regime.schemes[name].sizes)
            values = [regime.schemes[name].sizes[s] for s in sizes]
            ax.plot(sizes, values, marker="o", ms=3, label=name, color=colour(name))
        ax.axvline(28, color="grey", ls=":", lw=0.8)
        ax.set_title(regime.title, fontsize=9)
        ax.set_xlabel("test image size (px)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    save(fig, path)


def plot_similarity(table_file: Path, path: Path) -> None:
    """The trained learned table's position similarity beside the fixed 2D sin-cos table's
    (computed from its formula), as in the ViT paper's Figure 7."""
    import torch

    from vit.model.pos_embed.sincos_2d import SinCos2d

    saved = json.loads(table_file.read_text())
    grid = tuple(saved["grid"])
    learned = torch.tensor(saved["table"])
    sincos = SinCos2d(dim=learned.shape[1], num_heads=1, depth=1, grid_size=grid, num_prefix_tokens=0)
    panels = [(f"learned_1d, trained ({saved['run']})", learned), ("sincos_2d, fixed", sincos.position_table(grid))]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, (title, table) in zip(axes, panels, strict=True):
        mosaic = similarity_mosaic(table, grid)
        # each panel from its own lowest similarity up to 1: sin-cos similarities are mostly positive
        image = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=float(mosaic.nan_to_num(1.0).min()), vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    fig.suptitle("each tile: one patch position's vector against every position's (7×7 grid)", fontsize=9)
    save(fig, path)


def plot_probe(path: Path, per_class: int = 4) -> None:
    """The positional probe: a few generated images of each of its four classes."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    probe = instantiate(OmegaConf.load(ROOT / "configs" / "data" / "probe.yaml"))  # as `data=probe` builds it
    split = probe.generate(64, seed=0)
    names = ["plus left of and above the square", "left, below", "right, above", "right, below"]
    fig, axes = plt.subplots(4, per_class, figsize=(7, 6))
    for label, row in enumerate(axes):
        images = split.images[split.labels == label][:per_class]
        for ax, image in zip(row, images, strict=True):
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks(range(-1, 16, 4), [])  # the 4 px patch grid
            ax.set_yticks(range(-1, 16, 4), [])
            ax.tick_params(length=0)
            ax.grid(color="tab:red", lw=0.5, alpha=0.6)
        row[0].set_title(f"class {label}: {names[label]}", fontsize=7, loc="left")
    save(fig, path)


def plot_recipe_time(recipes: Path, patch_runs: list[ablation.Run], path: Path) -> None:
    """Top-1 against wall time: each recipe run's final point (whole process, one test view),
    and the patch-wise recipe's validation curve against its training time."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for run in [r for r in patch_runs if r.scheme == "learned_1d"]:
        elapsed, minutes, accs = 0.0, [], []
        for record in run.history:
            elapsed += record["epoch_s"]
            if "val_acc1" in record:
                minutes.append(elapsed / 60)
                accs.append(record["val_acc1"])
        ax.plot(minutes, accs, color="C2", alpha=0.5, lw=1)
    rows = [r for r in csv.DictReader(open(recipes)) if r["top1_one_view"] and r["recipe"] != "digits"]
    for i, recipe in enumerate(dict.fromkeys(r["recipe"] for r in rows)):
        mine = [r for r in rows if r["recipe"] == recipe]
        label = f"{recipe} ({mine[0]['precision']}, {mine[0]['cpu'].split(' (')[0]})"
        minutes = [float(r["wall_s"]) / 60 for r in mine]
        ax.scatter(minutes, [float(r["top1_one_view"]) for r in mine], color=f"C{i}", label=label, zorder=3)
    ax.axhline(92.3, color="grey", ls="--", lw=0.8)
    ax.text(1, 92.35, "published 200-epoch ViT, 6 blocks × 64 (92.3)", fontsize=7, color="grey")
    ax.set(
        xlabel="wall time (minutes): points the whole process, lines training alone",
        ylabel="Fashion-MNIST test top-1, one view (%)",
        ylim=(88, 95),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)


# Where each scheme acts, top to bottom through the model: (step, schemes acting there).
STEPS = [
    ("patch embedding → tokens", ""),
    ("+ a vector per token", "learned_1d, sincos_1d, sincos_2d"),
    ("block: LayerNorm → q, k, v", ""),
    ("rotate q and k by position", "rope_2d, rope_mixed"),
    ("logits q·kᵀ/√d  + a bias per offset", "relative_bias, alibi_2d"),
    ("softmax → ·v → projection, MLP", ""),
    ("between blocks: mix grid neighbours", "cpe (a 3×3 depthwise conv)"),
    ("pool: class token or average → head", ""),
]


def plot_where_schemes_act(path: Path) -> None:
    """One block's path with the place each scheme adds position (none: nowhere)."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.set_axis_off()
    ax.set(xlim=(0, 10), ylim=(-0.5, len(STEPS) - 0.3))
    for i, (step, schemes) in enumerate(STEPS):
        y = len(STEPS) - 1 - i
        colour = "#dbe9f6" if not schemes else "#fde2c8"
        ax.text(
            2.6,
            y,
            step,
            ha="center",
            va="center",
            fontsize=8.5,
            bbox={"boxstyle": "round,pad=0.4", "fc": colour, "ec": "grey", "lw": 0.6},
        )
        if schemes:
            ax.annotate(
                schemes,
                xy=(5.1, y),
                xytext=(5.6, y),
                va="center",
                fontsize=8.5,
                color="#a0522d",
                arrowprops={"arrowstyle": "-", "color": "#a0522d", "lw": 0.8},
            )
        if i:
            ax.annotate("", xy=(2.6, y + 0.28), xytext=(2.6, y + 0.72), arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.text(
        2.6,
        -0.45,
        "blocks 2 … L repeat the middle four steps; none adds position nowhere",
        ha="center",
        fontsize=7.5,
        style="italic",
    )
    save(fig, path)


FIGURES = {
    "schemes.png": "per-scheme test top-1 with 95% intervals, both regimes",
    "paired_vs_none.png": "each scheme minus none, paired by seed",
    "shuffled.png": "top-1 lost when each image's tokens are shuffled",
    "sizes.png": "top-1 against test image size",
    "curves.png": "validation top-1 per epoch, patch-wise regime",
    "attention_distance.png": "mean attention distance per head and block, patch-wise regime",
    "position_similarity.png": "position similarity of the learned and sin-cos tables",
    "probe.png": "the positional probe's four classes",
    "recipe_time.png": "Fashion-MNIST recipes: top-1 against wall time",
    "where_schemes_act.png": "where each scheme adds position in a block",
}


def draw_all(results_dir: Path, out: Path) -> list[Path]:
    """Every figure in FIGURES from the files under `results_dir`, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    patch_runs = runs_from_rows(results_dir / "ablations" / "fmnist_patch.jsonl")
    regimes = [
        regime_from_table(results_dir / "ablations" / "fmnist_full.csv", "CCT tokenizer, 7 epochs (fmnist_full)"),
        regime_from_runs(patch_runs, "4 px patches, 30 epochs (fmnist_patch)"),
    ]
    plot_schemes(regimes, out / "schemes.png")
    plot_paired(regimes, out / "paired_vs_none.png")
    plot_shuffled(regimes, out / "shuffled.png")
    plot_sizes(regimes, out / "sizes.png")
    report.plot_curves(patch_runs, out / "curves.png")
    report.plot_attention_distance(patch_runs, out / "attention_distance.png", columns=5, colour=colour, dpi=DPI)
    plot_similarity(results_dir / "ablations" / "fmnist_patch_learned_1d_table.json", out / "position_similarity.png")
    plot_probe(out / "probe.png")
    plot_recipe_time(results_dir / "recipes.csv", patch_runs, out / "recipe_time.png")
    plot_where_schemes_act(out / "where_schemes_act.png")
    return [out / name for name in FIGURES]
