"""Convergence curves (paper Fig. 4) read from the `history.json` files of finished runs.

Nothing is retrained: each run's per-epoch test accuracy is read back, runs are grouped by their
settings (dataset, model, temperature, base learning rate, lr x T scaling) and the test error
`1 - test/accuracy` is averaged over the runs of a group (different seeds), with the population
standard deviation (ddof = 0) as the band. The temperature T divides the logits.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from tempscale_tf.files import read_json


@dataclasses.dataclass(frozen=True, order=True)
class RunKey:
    """The settings that define a group of runs (all but the seed)."""

    dataset: str
    model: str
    temperature: float
    lr: float
    scaled_lr: bool  # `scale_lr_with_temperature`: lr x T and weight decay / T

    @property
    def lr_label(self) -> str:
        return f"lr {self.lr:g} x T" if self.scaled_lr else f"lr {self.lr:g}"

    @property
    def label(self) -> str:
        return f"T={self.temperature:g}, {self.lr_label}"


def run_key(config) -> RunKey:
    """The `RunKey` of a run config (a ConfigDict or the dict of `config.json`)."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    return RunKey(
        str(get("dataset")),
        str(get("model")),
        float(get("temperature")),
        float(get("lr")),
        bool(get("scale_lr_with_temperature", False)),
    )


def read_run(workdir):
    """(config dict from config.json, history list from history.json) of a workdir."""
    workdir = pathlib.Path(workdir)
    config = read_json(workdir / "config.json")
    history_path = workdir / "history.json"
    history = read_json(history_path) if history_path.exists() else []
    return config, history


def test_error_curve(history):
    """(epochs [E] (1-based), test error [E]) of one run's history."""
    epochs = np.array([h["epoch"] + 1 for h in history], np.int64)
    errors = np.array([1.0 - h["test/accuracy"] for h in history], np.float64)
    return epochs, errors


def convergence_curves(workdirs) -> dict:
    """Mean and std test-error curves per `RunKey` over the given run workdirs.

    Runs of a group with different lengths are cut to the shortest one.

    Returns:
      {RunKey: {"epoch": [E], "mean": [E], "std": [E], "runs": n, "seeds": [...]}}, sorted by key;
      runs without a history are left out.
    """
    groups: dict = {}
    for workdir in workdirs:
        config, history = read_run(workdir)
        if not history:
            continue
        groups.setdefault(run_key(config), []).append((config.get("seed", 0), history))
    curves = {}
    for key in sorted(groups):
        runs = groups[key]
        length = min(len(h) for _, h in runs)
        errors = np.stack([test_error_curve(h[:length])[1] for _, h in runs])
        curves[key] = {
            "epoch": test_error_curve(runs[0][1][:length])[0],
            "mean": errors.mean(axis=0),
            "std": errors.std(axis=0),
            "runs": len(runs),
            "seeds": sorted(s for s, _ in runs),
        }
    return curves
