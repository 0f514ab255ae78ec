"""Clean vs worst-case robust accuracy: is a high-temperature gain more than a trade-off?

A model that is less accurate on clean images is usually more robust (the accuracy-robustness
trade-off). To credit the temperature with a robustness gain, a high-T model must beat what a
T = 1 model reaches *at the same clean accuracy*. The T = 1 runs (different adversarial weights or
objectives: the equal-accuracy control) trace a curve of worst-case robust accuracy against clean
accuracy; each high-T run is compared with that curve, linearly interpolated at its clean
accuracy, and the excess is compared with the noise: the seed spread, but never less than two
binomial standard errors of the run's robust accuracy on the attacked images (two seeds that
happen to agree give a spread of 0, which would make any difference look real).

The curve is the T = 1 frontier: a T = 1 setting that another T = 1 setting beats in both clean
and robust accuracy (it is *dominated*) is a worse T = 1 recipe, not a point of the trade-off,
and is left out; crediting the temperature for beating it would flatter the temperature. Outside
the frontier's clean range nothing is extrapolated, with one exception that needs no
extrapolation: a high-T model less accurate than every frontier point *and* less robust than the
least accurate (the most robust) of them, by more than the threshold, is dominated by a T = 1
model: a loss.

Input: the per-run rows of a sweep (`<table>_runs.csv`): `temperature`, `seed`, `clean`,
`worst_case` (and optionally `variant`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from tempscale_tf.analysis import plots


def _check_runs(runs: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    missing = [c for c in ("temperature", "seed", x, y) if c not in runs]
    if missing:
        raise ValueError(f"the runs need the columns {missing}")
    runs = runs.dropna(subset=[x, y]).copy()
    runs["temperature"] = runs["temperature"].astype(float)
    if "variant" not in runs:
        runs["variant"] = ""
    runs["variant"] = runs["variant"].fillna("")
    return runs


def reference_points(runs: pd.DataFrame, x="clean", y="worst_case", temperature=1.0):
    """The `temperature` runs' settings (variants), each averaged over its seeds, sorted by `x`,
    with a column `dominated`: another setting is at least as high in `x` and `y` and higher in
    one of them.

    Args:
      runs: the per-run rows (`temperature`, `seed`, `variant`, `x`, `y` columns).
      x: the clean-accuracy column.
      y: the robust-accuracy column.
      temperature: the reference temperature.

    Returns:
      a DataFrame indexed by variant with columns `x`, `y` and `dominated`.
    """
    runs = _check_runs(runs, x, y)
    ref = runs[np.isclose(runs["temperature"], temperature)]
    if ref.empty:
        raise ValueError(f"no runs at the reference temperature T={temperature:g}")
    points = ref.groupby("variant")[[x, y]].mean().sort_values([x, y])
    px, py = points[x].to_numpy(float), points[y].to_numpy(float)
    points["dominated"] = [
        bool(np.any((px >= a) & (py >= b) & ((px > a) | (py > b)))) for a, b in zip(px, py)
    ]
    return points


def reference_curve(runs: pd.DataFrame, x="clean", y="worst_case", temperature=1.0):
    """The reference trade-off curve: `(x, y)` arrays of the `temperature` runs' settings that
    no other of its settings dominates (`reference_points`), each averaged over its seeds,
    sorted by `x` (so `y` falls as `x` rises).

    Args:
      runs: the per-run rows (`temperature`, `seed`, `variant`, `x`, `y` columns).
      x: the clean-accuracy column.
      y: the robust-accuracy column.
      temperature: the reference temperature.
    """
    points = reference_points(runs, x, y, temperature)
    frontier = points[~points["dominated"]]
    return frontier[x].to_numpy(float), frontier[y].to_numpy(float)


def seed_spread(runs: pd.DataFrame, y="worst_case") -> float:
    """The largest range (max - min) of `y` over the seeds of one setting (temperature and
    variant), over the settings with two or more seeds; NaN if there are none."""
    runs = _check_runs(runs, "seed", y)
    ranges = [
        float(g[y].max() - g[y].min())
        for _, g in runs.groupby(["temperature", "variant"])
        if g["seed"].nunique() >= 2
    ]
    return max(ranges) if ranges else math.nan


def sampling_error(accuracy: float, num_examples) -> float:
    """The binomial standard error `sqrt(p (1 - p) / n)` of an accuracy `p` measured on `n`
    examples; 0 when `n` is unknown (None or NaN)."""
    if num_examples is None or not np.isfinite(num_examples):
        return 0.0
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"an accuracy must lie in [0, 1], got {accuracy}")
    return math.sqrt(accuracy * (1.0 - accuracy) / float(num_examples))


@dataclasses.dataclass
class Verdict:
    temperature: float
    clean: float  # mean over seeds
    robust: float  # mean over seeds
    curve: float  # the reference curve at `clean` (NaN outside its range)
    excess: float  # robust - curve
    spread: float  # the seed spread (`seed_spread`)
    sampling_se: float  # `sampling_error(robust, n)` on the run's attacked images
    threshold: float  # max(spread, 2 * sampling_se): |excess| above it is a finding
    verdict: str


def verdicts(
    runs, x="clean", y="worst_case", temperature=1.0, examples_column="eval/num_examples"
) -> list[Verdict]:
    """One `Verdict` per other temperature (its default-variant runs, averaged over seeds).

    Args:
      runs: the per-run rows (see `reference_curve`).
      x: the clean-accuracy column.
      y: the robust-accuracy column.
      temperature: the reference temperature whose runs trace the curve.
      examples_column: the column with the number of attacked images per run, for the sampling
        floor; without it (or where it is empty) the threshold is the seed spread alone.

    The threshold is the seed spread, floored at two binomial standard errors of the run's robust
    accuracy on its attacked images (0.03 at 0.36 on 1,000 images). "real gain" if the excess
    over the reference curve exceeds the threshold, "loss" if it is below minus the threshold,
    "within noise" otherwise. Outside the curve's clean range (no extrapolation) the verdict is
    "not comparable", except below it: there `curve` is the robust accuracy of the curve's least
    accurate point, a T = 1 model more accurate than the run, and a run below it by more than
    the threshold is dominated, a "loss". "not comparable" also when no spread is known.
    """
    runs = _check_runs(runs, x, y)
    cx, cy = reference_curve(runs, x, y, temperature)
    spread = seed_spread(runs, y)
    out = []
    others = runs[~np.isclose(runs["temperature"], temperature) & (runs["variant"] == "")]
    for t, g in others.groupby("temperature"):
        clean, robust = float(g[x].mean()), float(g[y].mean())
        n = float(g[examples_column].min()) if examples_column in g else None
        se = sampling_error(robust, n)
        threshold = max(spread, 2.0 * se)
        below, above = clean < cx[0], clean > cx[-1]
        if above:
            curve = math.nan
        elif below:
            curve = float(cy[0])
        else:
            curve = float(np.interp(clean, cx, cy))
        excess = robust - curve
        if above:
            verdict = "not comparable (clean accuracy above the T=1 curve)"
        elif math.isnan(spread):
            verdict = "not comparable (no seed spread)"
        elif excess < -threshold:
            verdict = "loss" if not below else "loss (dominated by a T=1 setting)"
        elif below:
            verdict = "not comparable (clean accuracy below the T=1 curve)"
        elif excess > threshold:
            verdict = "real gain"
        else:
            verdict = "within noise"
        out.append(Verdict(float(t), clean, robust, curve, excess, spread, se, threshold, verdict))
    return out


def plot_tradeoff(runs, x="clean", y="worst_case", temperature=1.0, title=""):
    """Clean vs worst-case accuracy, one marker per run (seeds shown as separate markers), the
    reference temperature's frontier through its settings' seed means (its dominated settings
    circled), one colour per T.

    Args:
      runs: the per-run rows (see `reference_curve`).
      x: the clean-accuracy column.
      y: the robust-accuracy column.
      temperature: the reference temperature.
      title: the axes' title.

    Returns:
      a `matplotlib.figure.Figure` (save it with `plots.save_figure`).
    """
    runs = _check_runs(runs, x, y)
    fig = plots.new_figure(6, 4.5)
    ax = fig.subplots()
    points = reference_points(runs, x, y, temperature)
    frontier, dominated = points[~points["dominated"]], points[points["dominated"]]
    ax.plot(
        frontier[x],
        frontier[y],
        "-",
        color="0.3",
        label=f"T={temperature:g} frontier (seed means)",
        zorder=1,
    )
    if len(dominated):
        ax.scatter(
            dominated[x],
            dominated[y],
            s=160,
            facecolors="none",
            edgecolors="0.5",
            label=f"T={temperature:g} dominated (off the frontier)",
            zorder=1,
        )
    temps = sorted(runs["temperature"].unique())
    colors = dict(zip(temps, plots._colors(len(temps))))
    markers = {}
    for (t, variant), g in runs.groupby(["temperature", "variant"]):
        marker = markers.setdefault(variant, plots._MARKERS[len(markers) % len(plots._MARKERS)])
        label = f"T={t:g}" + (f" {variant}" if variant else "") + f" ({len(g)} run"
        label += "s)" if len(g) > 1 else ")"
        ax.scatter(g[x], g[y], color=colors[t], marker=marker, label=label, zorder=2)
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("worst-case robust accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
