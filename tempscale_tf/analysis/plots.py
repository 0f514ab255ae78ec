"""Figures of the analyses (matplotlib, Agg canvas, no pyplot state).

Each `plot_*` function takes `RunAnalysis` objects (or convergence curves) and returns a
`matplotlib.figure.Figure`; `save_figure` writes it as a PNG through the Agg backend. The
temperature T of a run is its training temperature and divides the logits (`softmax(z / T)`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import textwrap

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tempscale_tf.analysis import gradients

FIGURES = (
    "gradient_norms",
    "prototype_direction",
    "tsne",
    "convergence",
    "pgd_logits",
    "prototype_geometry",
    "rank",
    "ood",
)


def new_figure(width, height) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path) -> str:
    """Write `fig` as a PNG (Agg) and return the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return str(path)


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")
_HATCHES = (None, "//", "..", "xx", "\\\\", "++")


def _colors(n, name="tab10"):
    from matplotlib import colormaps

    cmap = colormaps[name if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


class _Styles:
    """Per-run styles: the colour encodes the temperature, the line style / marker / hatch the
    learning-rate setting, consistently across figures."""

    def __init__(self, keys):
        keys = list(keys)
        temps = sorted({k.temperature for k in keys})
        self._color = dict(zip(temps, _colors(len(temps))))
        groups = sorted({_group_label(k) for k in keys})
        self._group = {g: i for i, g in enumerate(groups)}

    def __call__(self, key) -> dict:
        i = self._group.get(_group_label(key), 0)
        return {
            "color": self._color.get(key.temperature, "k"),
            "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "hatch": _HATCHES[i % len(_HATCHES)],
        }


def _run_label(a) -> str:
    return a.key.label


def _group_label(key) -> str:
    """The label of a run's settings without the temperature (lines of 'vs T' plots)."""
    return f"{key.model}, {key.lr_label}" if key.dataset else key.lr_label


def _scaled_twin(key):
    """At T = 1, lr x T training is the plain run: the key of the lr x T group it also joins."""
    if key.temperature == 1.0 and not key.scaled_lr:
        return dataclasses.replace(key, scaled_lr=True)
    return None


def _by_group(analyses, value):
    """{group label: (temperatures sorted, mean value per T, all (T, value) points)}.

    A plain T = 1 run also joins the lr x T group of the same lr (the two trainings coincide).
    """
    groups = {}
    for a in analyses:
        groups.setdefault(_group_label(a.key), []).append((a.temperature, value(a)))
    labels = set(groups)
    for a in analyses:
        twin = _scaled_twin(a.key)
        if twin is not None and _group_label(twin) in labels:
            groups[_group_label(twin)].append((a.temperature, value(a)))
    out = {}
    for label, points in sorted(groups.items()):
        ts = sorted({t for t, _ in points})
        means = [np.nanmean([v for t2, v in points if t2 == t]) for t in ts]
        out[label] = (np.array(ts), np.array(means), points)
    return out


def _plot_vs_temperature(ax, analyses, value, ylabel, marker="o", linestyle="-", suffix=""):
    groups = _by_group(analyses, value)
    for color, (label, (ts, means, points)) in zip(_colors(len(groups), "Dark2"), groups.items()):
        ax.plot(ts, means, linestyle=linestyle, marker=marker, color=color, label=label + suffix)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=color, s=12, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training temperature T")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _collapsed(a) -> bool:
    """True when all of a run's evaluated features are identical (a dead network)."""
    f = a.features
    return bool(len(f) == 0 or np.all(f == f[:1]))


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


# ------------------------------------------------------------------------------ gradients


def plot_gradient_norms(analyses, theory_temperatures=(0.1, 1, 10, 50, 100)) -> Figure:
    """Per-sample gradient norms vs margin and temperature, and the hard samples' share."""
    fig = new_figure(12, 9)
    axes = fig.subplots(2, 2)
    num_classes = analyses[0].logits.shape[1] if analyses else 10
    style = _Styles(a.key for a in analyses)
    _panel_model_free_norms(axes[0, 0], theory_temperatures, num_classes)
    _panel_norm_vs_margin(axes[0, 1], analyses, style)
    _panel_hard_share(axes[1, 0], analyses, style)
    _plot_vs_temperature(
        axes[1, 1],
        analyses,
        lambda a: a.metrics["grad_logit_norm_hard_median"],
        "",
        suffix=" (hard 25%)",
    )
    _plot_vs_temperature(
        axes[1, 1],
        analyses,
        lambda a: a.metrics["grad_logit_norm_easy_median"],
        "median ||dCE_T/dz|| at the training T",
        marker="s",
        linestyle="--",
        suffix=" (easy 75%)",
    )
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_title("(d) median gradient norm of hard and easy samples")
    axes[1, 1].legend(fontsize=7)
    return fig


def _panel_model_free_norms(ax, temperatures, num_classes):
    m = np.linspace(-20, 20, 401)
    for color, t in zip(_colors(len(temperatures)), temperatures):
        norm = gradients.two_level_gradient_norm(m, t, num_classes)
        ax.plot(m, np.maximum(norm, 1e-12), color=color, label=f"T={t:g}")
    ax.set_yscale("log")
    ax.set_ylim(1e-6, 20)
    ax.set_xlabel("logit margin m = z_y - max_{j!=y} z_j")
    ax.set_ylabel("||dCE_T/dz|| = ||softmax(z/T) - y|| / T")
    ax.set_title(f"(a) model-free: z_y = m, other logits 0, K = {num_classes}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _panel_norm_vs_margin(ax, analyses, style):
    for a in analyses:
        st = style(a.key)
        ax.scatter(
            a.margins,
            np.maximum(a.logit_grad_norms, 1e-12),
            s=6,
            alpha=0.5,
            color=st["color"],
            marker=st["marker"],
            label=_run_label(a),
        )
    ax.set_yscale("log")
    ax.set_xlabel("logit margin (test samples)")
    ax.set_ylabel("||dCE_T/dz|| at the training T")
    ax.set_title("(b) trained models: gradient norm vs margin")
    ax.legend(fontsize=7, markerscale=2)
    ax.grid(alpha=0.3)


def _panel_hard_share(ax, analyses, style):
    for a in analyses:
        st = style(a.key)
        sw = a.sweep
        ax.plot(
            sw["temperature"],
            sw["hard_share"],
            color=st["color"],
            linestyle=st["linestyle"],
            label=_run_label(a),
        )
        ax.scatter([a.temperature], [a.metrics["hard_share"]], color=st["color"], s=60, marker="*")
    ax.axhline(0.25, color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("loss temperature T (fixed logits of each model)")
    ax.set_ylabel("hard share of sum_i ||g_i||")
    ax.set_title("(c) gradient share of the 25% lowest-margin samples (*: training T)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)


def plot_direction_cosines(analyses, representatives=None) -> Figure:
    """Cosine between each sample's negative feature gradient and the way to its prototype.

    (a) the distribution per run of `representatives` (default: all; runs with collapsed,
    identical features are listed but not drawn); (b) the mean vs T over all `analyses`.
    """
    representatives = representatives if representatives is not None else analyses
    fig = new_figure(12, 4.5)
    ax1, ax2 = fig.subplots(1, 2)
    bins = np.linspace(-1, 1, 41)
    style = _Styles(a.key for a in representatives)
    for a in representatives:
        st = style(a.key)
        if _collapsed(a):
            ax1.plot([], [], color=st["color"], label=_run_label(a) + " (collapsed, not drawn)")
            continue
        ax1.hist(
            a.direction_cosines,
            bins=bins,
            histtype="step",
            density=True,
            color=st["color"],
            linestyle=st["linestyle"],
            linewidth=1.5,
            label=_run_label(a),
        )
    ax1.set_xlabel("cos(-dCE_T/df, prototype - f)")
    ax1.set_ylabel("density")
    ax1.set_title("(a) descent direction vs direction to the class prototype")
    ax1.legend(fontsize=7)
    _plot_vs_temperature(ax2, analyses, lambda a: a.metrics["dir_cos_mean"], "mean cosine")
    _plot_vs_temperature(
        ax2,
        analyses,
        lambda a: a.metrics["dir_cos_hard_mean"],
        "mean cosine",
        marker="s",
        linestyle="--",
        suffix=" (hard 25%)",
    )
    ax2.set_title("(b) mean cosine by training temperature")
    ax2.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------ geometry


def plot_tsne(analyses) -> Figure:
    """t-SNE of the penultimate features, one panel per run, coloured by true class."""
    shown = [a for a in analyses if a.tsne is not None]  # a str: why there is no embedding
    cols = min(4, max(len(shown), 1))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = new_figure(4 * cols, 4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    if not shown:
        _empty(axes[0], "no t-SNE computed")
    sc = None
    for ax, a in zip(axes, shown):
        if isinstance(a.tsne, str):
            _empty(ax, f"{_run_label(a)}\nno t-SNE:\n" + textwrap.fill(a.tsne, 36))
            continue
        emb, idx = a.tsne
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=a.labels[idx], cmap="tab10", s=6, vmin=0, vmax=9)
        ax.set_title(f"{_run_label(a)}\nacc {a.metrics['accuracy']:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    if sc is not None:
        fig.colorbar(sc, ax=list(axes[: len(shown)]), label="class", shrink=0.6)
    return fig


def plot_prototype_geometry(analyses) -> Figure:
    """Per class: mean and variance of the distance and cosine to the class prototype.

    Also the distance relative to the prototype's norm (runs at different T have features of
    very different scales) and the prototype norms themselves.
    """
    fig = new_figure(max(15, 1.5 * len(analyses) + 10), 8)
    axes = fig.subplots(2, 3)
    relative = lambda st: st["distance_mean"] / np.maximum(st["prototype_norm"], 1e-12)
    relative_sd = lambda st: np.sqrt(st["distance_var"]) / np.maximum(st["prototype_norm"], 1e-12)
    panels = (
        (axes[0, 0], lambda st: st["distance_mean"], "mean ||f - mu_c||", "distance_var"),
        (axes[0, 1], relative, "mean ||f - mu_c|| / ||mu_c||", relative_sd),
        (axes[0, 2], lambda st: st["distance_var"], "variance of ||f - mu_c||", None),
        (axes[1, 0], lambda st: st["cosine_mean"], "mean cos(f, mu_c)", "cosine_var"),
        (axes[1, 1], lambda st: st["cosine_var"], "variance of cos(f, mu_c)", None),
        (axes[1, 2], lambda st: st["prototype_norm"], "||mu_c||", None),
    )
    n = max(len(analyses), 1)
    width = 0.8 / n
    style = _Styles(a.key for a in analyses)
    for ax, value, ylabel, err in panels:
        for i, a in enumerate(analyses):
            st = style(a.key)
            stats = a.prototype_stats
            heights = value(stats)
            classes = np.arange(len(heights))
            if err is None:
                yerr = None
            else:
                yerr = np.sqrt(stats[err]) if isinstance(err, str) else err(stats)
            ax.bar(
                classes + (i - (n - 1) / 2) * width,
                heights,
                width,
                yerr=yerr,
                color=st["color"],
                hatch=st["hatch"],
                edgecolor="white" if st["hatch"] else None,
                linewidth=0,
                label=_run_label(a),
                error_kw={"elinewidth": 0.6, "capsize": 1},
            )
        ax.set_xlabel("class")
        ax.set_ylabel(ylabel)
        ax.set_xticks(classes)
        ax.grid(alpha=0.3, axis="y")
    means = [
        np.nanmin(a.prototype_stats["cosine_mean"] - np.sqrt(a.prototype_stats["cosine_var"]))
        for a in analyses
        if not _collapsed(a)
    ]
    if means:  # zoom on the informative range of the cosine means
        axes[1, 0].set_ylim(max(0.0, min(means) - 0.02), 1.005)
    axes[0, 0].set_title("distance to the prototype mu_c (whiskers: std)")
    axes[0, 1].set_title("relative distance (whiskers: std / ||mu_c||)")
    axes[1, 0].set_title("cosine similarity to the prototype (whiskers: std)")
    axes[1, 2].set_title("prototype norms (feature scale)")
    axes[0, 0].legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------ convergence


def plot_convergence(curves) -> Figure:
    """Test error vs epoch, one panel per learning-rate setting, one line (mean +- std) per T."""
    panels = {}
    for key, curve in curves.items():
        panels.setdefault(_group_label(key), []).append((key, curve))
    for key, curve in curves.items():  # plain T = 1 runs are also the lr x T runs at T = 1
        twin = _scaled_twin(key)
        if twin is not None and _group_label(twin) in panels:
            panels[_group_label(twin)].append((key, curve))
    n = max(len(panels), 1)
    fig = new_figure(5 * n, 4.5)
    axes = np.atleast_1d(fig.subplots(1, n)).ravel()
    if not panels:
        _empty(axes[0], "no history.json found")
    temps = sorted({k.temperature for k in curves})
    color_of = dict(zip(temps, _colors(len(temps))))
    for ax, (label, items) in zip(axes, sorted(panels.items())):
        for key, c in sorted(items, key=lambda kc: kc[0].temperature):
            color = color_of[key.temperature]
            ax.plot(
                c["epoch"],
                c["mean"],
                color=color,
                label=f"T={key.temperature:g} ({c['runs']} seed{'s' if c['runs'] > 1 else ''})",
            )
            ax.fill_between(
                c["epoch"], c["mean"] - c["std"], c["mean"] + c["std"], color=color, alpha=0.2
            )
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------ attacks


def plot_pgd_logits(analyses) -> Figure:
    """Distributions of the true-class logit and the largest other logit, clean vs PGD."""
    from tempscale_tf.analysis.adversarial import true_and_other_logits

    shown = [a for a in analyses if a.adversarial_logits is not None]
    cols = min(5, max(len(shown), 1))
    blocks = max(1, math.ceil(len(shown) / cols))
    fig = new_figure(3.6 * cols, 6.5 * blocks)
    axes = np.array(fig.subplots(2 * blocks, cols)).reshape(2 * blocks, cols)
    if not shown:
        _empty(axes[0, 0], "PGD not run (eps = 0)")
    for j in range(len(shown), blocks * cols):
        axes[2 * (j // cols), j % cols].set_axis_off()
        axes[2 * (j // cols) + 1, j % cols].set_axis_off()
    for j, a in enumerate(shown):
        rows = ((a.clean_logits, "clean"), (a.adversarial_logits, "PGD"))
        values = [true_and_other_logits(z, a.labels) for z, _ in rows]
        lo = min(v.min() for pair in values for v in pair)
        hi = max(v.max() for pair in values for v in pair)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        for i, ((_, name), (true, other)) in enumerate(zip(rows, values)):
            ax = axes[2 * (j // cols) + i, j % cols]
            ax.hist(true, bins=bins, alpha=0.6, color="tab:blue", label="true-class logit z_y")
            ax.hist(other, bins=bins, alpha=0.6, color="tab:red", label="max other logit")
            acc = np.mean(true > other)
            ax.set_title(f"{_run_label(a)}\n{name}: accuracy {acc:.3f}", fontsize=9)
            ax.set_xlabel("logit")
            if j % cols == 0:
                ax.set_ylabel("samples")
            if j == 0:
                ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------ rank


def plot_rank(analyses, representatives=None) -> Figure:
    """Effective and numerical rank vs T; accuracy under PCA truncation; feature spectra."""
    representatives = representatives if representatives is not None else analyses
    fig = new_figure(12, 9)
    axes = fig.subplots(2, 2)
    for ax, kind, label, title in (
        (axes[0, 0], "erank", "effective rank", "(a) effective rank of centred features (solid) "
         "and logits (dashed)"),
        (axes[0, 1], "nrank", "numerical rank", "(b) numerical rank (s > s_max * max(N, D) * "
         "eps_float32)"),
    ):  # fmt: skip
        _plot_vs_temperature(ax, analyses, lambda a, k=kind: a.metrics[f"{k}_features"], label)
        _plot_vs_temperature(
            ax,
            analyses,
            lambda a, k=kind: a.metrics[f"{k}_logits"],
            label,
            marker="s",
            linestyle="--",
            suffix=" (logits)",
        )
        ax.set_title(title)
        ax.legend(fontsize=7)
    style = _Styles(a.key for a in representatives)
    _panel_truncated_accuracy(axes[1, 0], representatives, style)
    _panel_spectra(axes[1, 1], representatives, style)
    return fig


def _panel_truncated_accuracy(ax, representatives, style):
    for a in representatives:
        st = style(a.key)
        ax.plot(
            a.rank_ks,
            a.rank_accuracies,
            color=st["color"],
            linestyle=st["linestyle"],
            label=_run_label(a),
        )
        k = a.metrics["k_within_1pt"]
        if not (isinstance(k, float) and math.isnan(k)):
            y = a.rank_accuracies[list(a.rank_ks).index(k)]
            ax.scatter([k], [y], color=st["color"], s=30)
    ax.set_xlabel("k principal directions kept")
    ax.set_ylabel("accuracy (model's own head)")
    ax.set_title("(c) accuracy after projecting features on the top-k PCs (dot: within 1 pt)")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3)


def _panel_spectra(ax, representatives, style):
    from tempscale_tf.analysis.rank import singular_values

    for a in representatives:
        st = style(a.key)
        s = singular_values(a.features)
        if s[0] > 0:  # collapsed features have no spectrum to draw
            ax.plot(
                np.arange(1, len(s) + 1),
                np.maximum(s / s[0], 1e-12),
                color=st["color"],
                linestyle=st["linestyle"],
                label=_run_label(a),
            )
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("s_i / s_1")
    ax.set_title("(d) singular values of the centred features")
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------------ OOD


def plot_ood(analyses) -> Figure:
    """AUROC and FPR@95%TPR of each score, per OOD set, per run."""
    from tempscale_tf.analysis.ood import SCORES

    sets = sorted({s for a in analyses for s in a.ood_scores if s != "in"})
    n = max(len(sets), 1)
    fig = new_figure(4.5 * n, 7.5)
    axes = np.array(fig.subplots(2, n)).reshape(2, n)
    if not sets:
        _empty(axes[0, 0], "no OOD set available")
    width = 0.8 / len(SCORES)
    x = np.arange(len(analyses))
    for j, name in enumerate(sets):
        for row, metric in enumerate(("auroc", "fpr95")):
            ax = axes[row, j]
            for i, (color, score) in enumerate(zip(_colors(len(SCORES)), SCORES)):
                values = [a.metrics.get(f"ood_{name}_{score}_{metric}", np.nan) for a in analyses]
                ax.bar(x + (i - 1) * width, values, width, color=color, label=score)
            ax.set_xticks(x)
            ax.set_xticklabels(
                [
                    _run_label(a).replace(", ", "\n") + f"\nacc {a.metrics['accuracy']:.2f}"
                    for a in analyses
                ],
                fontsize=7,
                rotation=90,
            )
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("AUROC" if metric == "auroc" else "FPR at 95% TPR")
            ax.set_title(f"{name}: {'AUROC (higher better)' if metric == 'auroc' else 'FPR95'}")
            ax.grid(alpha=0.3, axis="y")
            if j == 0 and row == 0:
                ax.legend(fontsize=7)
    return fig
