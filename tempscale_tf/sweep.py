"""Temperature sweeps: train + evaluate every (dataset, temperature, seed) cell, resumably.

A sweep config (`configs/sweep_*.py`) is a `ConfigDict` with:
  - `train`: a training config (`training.default_config()` fields); each cell overrides
    `dataset`, `temperature` and `seed`;
  - `eval`: an evaluation config (`evaluation.default_eval_config()` fields);
  - `datasets`, `temperatures`, `seeds`: the grid;
  - `table_dir`: where `<table_prefix>_<dataset>_<model>.{csv,md}` go (`table_prefix` defaults
    to "table1"); `notes`: how the setting differs from the paper (written under the table).
  - optional `extra_cells`: `(temperature, seed)` pairs run after the grid (e.g. a second seed
    at two temperatures only), for every dataset;
  - optional `results_dir`: a folder kept in the repository (e.g. `tables/runs/<sweep>`). Each
    finished cell's `config.json`, `history.json`, `metrics.json` and `eval.json` are copied to
    `<results_dir>/<cell>/`, and a cell whose results are there (with the same training and
    evaluation settings) is not trained or evaluated again, on any machine. The run folders
    (checkpoints) stay under the sweep's workdir: a cell killed while training resumes from its
    checkpoint on the same machine and restarts from scratch on a new one. A cell whose
    training finished carries itself in `<results_dir>/<cell>/in_progress/` (the three JSON
    files, the trained weights as a model-only checkpoint, about 8 MB for the fast CIFAR net,
    and `eval_partial.json`, saved after every evaluation stage and AutoAttack batch): commit
    that folder and any machine skips the training and resumes the evaluation where it stopped.
    A finished cell removes it. Carried cells are evaluated before new ones are trained, and
    `run_sweep(..., train_only=True)` trains and carries cells without evaluating them;
  - optional `variants`: extra cells with other training settings, each a dict with `name`,
    `temperature`, `seed` and `overrides` (e.g. `{"adv_weight": 0.5}` for an equal-accuracy
    control); their rows carry `variant` and the overridden settings;
  - optional `reference_rows`: rows (dicts with a `source` key) printed under ours, e.g. the
    paper's numbers.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time

import ml_collections
import pandas as pd
import tensorflow as tf
from absl import logging

from tempscale_tf import evaluation, tables, training
from tempscale_tf.files import atomic_write_json, read_json
from tempscale_tf.validation import check_temperature

ROW_SETTINGS = (
    "dataset",
    "model",
    "temperature",
    "seed",
    "epochs",
    "train_subset",
    "batch_size",
    "lr",
    "scale_lr_with_temperature",
)


def cell_dir(root, dataset, model, temperature, seed, variant="") -> str:
    """`<root>/<dataset>_<model>_t<T>_s<seed>[_<variant>]`: one cell's folder.

    Args:
      root: the sweep's workdir or results folder.
      dataset: the dataset name.
      model: the model name.
      temperature: the training temperature.
      seed: the seed.
      variant: the variant's name ("" for the grid's cells).
    """
    suffix = f"_{variant}" if variant else ""
    return os.path.join(root, f"{dataset}_{model}_t{temperature:g}_s{seed}{suffix}")


def _cell_config(base, dataset, temperature, seed, overrides=None):
    config = base.copy_and_resolve_references()
    config.dataset, config.temperature, config.seed = dataset, float(temperature), int(seed)
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ValueError(f"variant override {key!r} is not a training setting")
        if key == "mixed_precision":  # True/False or "auto": a field of either type
            config = ml_collections.ConfigDict({**config.to_dict(), key: value})
        else:
            config[key] = value
    return config


def _variants(sweep_config):
    """`(name, temperature, seed, overrides)` of the optional `variants`: extra cells with other
    training settings (e.g. the adversarial weight of an equal-accuracy control)."""
    out = []
    for v in sweep_config.get("variants", ()):
        v = dict(v)
        name = str(v.get("name", ""))
        if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
            raise ValueError(f"a variant needs a name of letters, digits, '.', '_' or '-': {v}")
        overrides = v.get("overrides", {})
        overrides = dict(overrides.items()) if hasattr(overrides, "items") else {}
        out.append((name, float(check_temperature(v["temperature"])), int(v["seed"]), overrides))
    return out


def _eval_settings(eval_config) -> dict:
    """The evaluation settings as they read back from `eval.json` (tuples become lists; the
    comma-separated strings of older configs become the same lists)."""
    settings = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in eval_config.items()}
    for key, kind in (("corruptions", str), ("severities", int)):
        if key in settings:
            settings[key] = [kind(v) for v in evaluation.as_list(settings[key])]
    return json.loads(json.dumps(settings))


def _normalized(settings) -> dict:
    """Settings read from an `eval.json`, in `_eval_settings`' form."""
    return _eval_settings(settings or {})


RESULT_FILES = ("config.json", "history.json", "metrics.json", "eval.json")
# A cell that finished training and not yet its evaluation, inside its results folder.
IN_PROGRESS = "in_progress"
TRAINED_FILES = ("config.json", "history.json", "metrics.json")
# The trained weights: the prefix a model-only `tf.train.Checkpoint.save(".../weights")` writes.
CARRIED_WEIGHTS = "weights-1"
# A cell's finished evaluation stages, while it evaluates (`evaluation.EvalStages`).
EVAL_PARTIAL = "eval_partial.json"


def committed_row(config, eval_config, results) -> dict | None:
    """The committed `eval.json` row of a cell in `results`, if its training and evaluation
    settings match `config` and `eval_config`; else None (a mismatch is logged).

    Args:
      config: the cell's training config.
      eval_config: the sweep's evaluation config.
      results: the cell's folder under the sweep's `results_dir`.
    """
    path = os.path.join(results, "eval.json")
    if not all(os.path.exists(os.path.join(results, f)) for f in RESULT_FILES):
        return None
    row = read_json(path)
    if _normalized(row.get("eval_settings")) != _eval_settings(eval_config):
        logging.info("%s: committed with other evaluation settings; recomputing", results)
        return None
    if not _same_training(results, config, "committed", "recomputing"):
        return None
    row.setdefault("precision", run_precision(results))
    return row


def _same_training(folder, config, what, action) -> bool:
    """Whether the finished run in `folder` has `config`'s training settings; a mismatch is
    logged as "<folder>: <what> with other training settings (...); <action>"."""
    try:
        training.check_resume_config(folder, config, finished=True)
    except ValueError as e:
        logging.info("%s: %s with other training settings (%s); %s", folder, what, e, action)
        return False
    return True


def run_precision(run_dir) -> str:
    """The compute precision a finished run trained in, from its `config.json` (which records
    what `mixed_precision` resolved to): "mixed_bfloat16", "mixed_float16" or "float32".

    Runs trained since `metrics.json` has a `precision` field record the policy name there; for
    older runs a mixed run is read as bfloat16: every earlier sweep ran on CPUs.
    """
    mixed = read_json(os.path.join(run_dir, "config.json")).get("mixed_precision")
    if not mixed:
        return "float32"
    metrics_path = os.path.join(run_dir, "metrics.json")
    policy = read_json(metrics_path).get("precision") if os.path.exists(metrics_path) else None
    return policy or "mixed_bfloat16"


def _commit_results(workdir, results) -> None:
    os.makedirs(results, exist_ok=True)
    for name in RESULT_FILES:
        tmp = os.path.join(results, f".{name}.tmp")
        shutil.copyfile(os.path.join(workdir, name), tmp)
        os.replace(tmp, os.path.join(results, name))


def run_cell(config, eval_config, workdir, progress=False, results=None) -> dict:
    """Train (or resume) one cell, evaluate it unless `eval.json` holds the same settings.

    With `results` (a folder kept in the repository), a cell committed there with the same
    settings is returned as it is, and a newly finished cell is copied there.

    Args:
      config: the cell's training config.
      eval_config: the evaluation config.
      workdir: the cell's run folder (checkpoints; resumed when it exists).
      progress: show progress bars.
      results: the cell's folder under `results_dir`, or None.

    Returns:
      the cell's row: the evaluation columns and the settings in `ROW_SETTINGS`.
    """
    carry = os.path.join(results, IN_PROGRESS) if results else None
    if results:
        row = committed_row(config, eval_config, results)
        if row is not None:
            if os.path.isdir(carry):  # left by a run killed between committing and cleaning up
                shutil.rmtree(carry)
            return row
    row = _run_cell(config, eval_config, workdir, progress, carry)
    if results:
        _commit_results(workdir, results)
        if os.path.isdir(carry):
            shutil.rmtree(carry)
    return row


def carried_training(config, carry) -> bool:
    """Whether `carry` (a cell's `in_progress` folder) holds a finished training of `config`:
    its JSON files and weights are there and its settings match (a mismatch is logged). Only a
    training that did not diverge is ever carried (`_write_carry` runs after it)."""
    if not carry or not os.path.isdir(carry):
        return False
    needed = [*TRAINED_FILES, f"{CARRIED_WEIGHTS}.index"]
    missing = [f for f in needed if not os.path.exists(os.path.join(carry, f))]
    if missing:
        logging.info("%s is incomplete (no %s); training again", carry, ", ".join(missing))
        return False
    return _same_training(carry, config, "carried", "training again")


def _write_carry(workdir, model, carry) -> None:
    """Copy a trained cell (its JSON files and model-only weights) to `carry`, atomically."""
    tmp = carry + ".tmp"
    for folder in (tmp, carry):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
    os.makedirs(tmp)
    for name in TRAINED_FILES:
        shutil.copyfile(os.path.join(workdir, name), os.path.join(tmp, name))
    written = tf.train.Checkpoint(model=model).save(os.path.join(tmp, "weights"))
    if os.path.basename(written) != CARRIED_WEIGHTS:  # a fresh Checkpoint numbers its first save 1
        raise RuntimeError(f"expected the carried weights at {CARRIED_WEIGHTS}, got {written}")
    os.replace(tmp, carry)
    logging.info("%s: the trained cell is carried there until its evaluation finishes", carry)


def _trained_model(workdir, carry):
    """The trained model: the carried weights if `carry` is given, else the run folder's."""
    if carry:
        return training.load_run(carry, checkpoint=os.path.join(carry, CARRIED_WEIGHTS))[0]
    return training.load_run(workdir)[0]


def _train(config, workdir, carry, settings, progress):
    """Make sure the cell is trained: take its carried training, accept the run folder's finished
    one, or train (resuming from a checkpoint). A new training is carried when `carry` is given.

    Returns the trained model to evaluate (the carried weights when there are any), or None if
    the training diverged (its row is then in the run folder's `eval.json`).
    """
    if carried_training(config, carry):
        # Trained in an earlier session, maybe on another machine. The carried weights are the
        # cell's (its saved evaluation stages are keyed to them), whatever the run folder holds.
        logging.info("%s: training finished earlier; evaluating the weights in %s", workdir, carry)
        os.makedirs(workdir, exist_ok=True)
        for name in TRAINED_FILES:
            shutil.copyfile(os.path.join(carry, name), os.path.join(workdir, name))
        return _trained_model(workdir, carry)
    return _train_uncarried(config, workdir, carry, settings, progress)


def _train_uncarried(config, workdir, carry, settings, progress):
    """`_train` for a cell with no usable carried training (the caller has checked)."""
    if os.path.exists(os.path.join(workdir, "metrics.json")):
        # a finished cell must match the grid ("auto" accepts the precision it chose there)
        training.check_resume_config(workdir, config, finished=True)
    else:
        try:
            training.train(config, workdir, progress=progress)
        except training.TrainingDivergedError as e:
            _diverged_row(config, workdir, settings, e)
            return None
    if "diverged" in read_json(os.path.join(workdir, "metrics.json")):
        return None
    model = _trained_model(workdir, None)
    if carry:
        _write_carry(workdir, model, carry)
    return model


def train_cell(config, eval_config, workdir, results, progress=False) -> str:
    """Train one cell (or resume its training) and carry it in `<results>/in_progress/`, without
    evaluating it; a later `run_cell` on any machine evaluates the carried weights.

    Returns:
      "carried" if the cell's training was carried already (nothing is done), "diverged" if the
      training diverged (the cell is then finished, with that status), else "trained".
    """
    carry = os.path.join(results, IN_PROGRESS)
    if carried_training(config, carry):
        return "carried"
    logging.info("%s: training (no evaluation)", workdir)
    model = _train_uncarried(config, workdir, carry, _eval_settings(eval_config), progress)
    return "diverged" if model is None else "trained"


def _run_cell(config, eval_config, workdir, progress=False, carry=None) -> dict:
    eval_path = os.path.join(workdir, "eval.json")
    settings = _eval_settings(eval_config)
    if os.path.exists(eval_path):
        row = read_json(eval_path)
        old = _normalized(row.get("eval_settings"))
        if old == settings:
            return row
        if _only_autoattack_changed(old, settings):
            return _refresh_autoattack(row, config, eval_config, workdir, settings, progress)
        logging.info("%s: evaluation settings changed, re-evaluating", workdir)
    model = _train(config, workdir, carry, settings, progress)
    if model is None:  # diverged: its row is in eval.json
        return read_json(eval_path)
    train_metrics = read_json(os.path.join(workdir, "metrics.json"))
    partial = os.path.join(carry or workdir, EVAL_PARTIAL)
    row = evaluation.evaluate_model(
        model,
        config.temperature,
        config.dataset,
        eval_config,
        data_dir=config.data_dir or None,
        progress=progress,
        resume_path=partial,
    )
    row.update({k: config[k] for k in ROW_SETTINGS})
    row["train/accuracy"] = train_metrics.get("train/accuracy")
    row["train/loss"] = train_metrics.get("train/loss")
    row["train/seconds"] = train_metrics.get("train/total_seconds")
    row["precision"] = run_precision(workdir)
    row["eval_settings"] = settings
    atomic_write_json(eval_path, row)
    if os.path.exists(partial):
        os.remove(partial)
    return row


def _diverged_row(config, workdir, settings, error) -> dict:
    """Record a cell whose training diverged (a row with its status and no accuracies)."""
    logging.warning("%s: %s", workdir, error)
    message = f"diverged: {str(error).split('. ')[0]}"
    row = {k: config[k] for k in ROW_SETTINGS}
    row.update({"status": message, "eval_settings": settings})
    history = os.path.join(workdir, "history.json")
    if not os.path.exists(history):
        atomic_write_json(history, [])
    if not os.path.exists(os.path.join(workdir, "config.json")):
        atomic_write_json(os.path.join(workdir, "config.json"), training.config_dict(config))
    atomic_write_json(os.path.join(workdir, "metrics.json"), {"diverged": message})
    atomic_write_json(os.path.join(workdir, "eval.json"), row)
    return row


def _only_autoattack_changed(old, new) -> bool:
    keys = set(old) | set(new)
    return all(
        old.get(k) == new.get(k)
        for k in keys
        if k not in evaluation.AUTOATTACK_SETTINGS + ("jit_compile",)
    )


def _refresh_autoattack(row, config, eval_config, workdir, settings, progress):
    """Add (or redo) only the AutoAttack columns of an evaluated cell."""
    logging.info("%s: adding the AutoAttack columns", workdir)
    model, _ = training.load_run(workdir)
    images, labels = evaluation.subset_arrays(
        config.dataset, eval_config.split, config.data_dir or None, eval_config.num_examples
    )
    if "worst_case_pgd" not in row:  # rows from before AutoAttack: their worst case was PGD-only
        row["worst_case_pgd"] = row["worst_case"]
    row.update(
        evaluation.autoattack_columns(
            model, images, labels, config.temperature, eval_config, row, progress
        )
    )
    for key in evaluation.AUTOATTACK_SETTINGS:
        row[f"eval/{key}"] = eval_config[key]
    row["eval_settings"] = settings
    atomic_write_json(os.path.join(workdir, "eval.json"), row)
    return row


def assemble_tables(rows, sweep_config, command) -> list[str]:
    """Write `<prefix>_<dataset>_<model>.{csv,md}` (mean and std over seeds) and a per-run CSV.

    Args:
      rows: the cells' rows (`run_cell`), with `variant` and its overrides for variants.
      sweep_config: the sweep config (grid, notes, reference rows, table folder and prefix).
      command: the command line, recorded in the tables.

    Returns:
      the paths written.
    """
    paths = []
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "eval_settings"} for r in rows])
    if frame.empty:
        return paths
    columns = [
        c
        for c in evaluation.MAIN_COLUMNS + evaluation.DIAGNOSTIC_COLUMNS + ("train/accuracy",)
        if c in frame
    ]
    for (dataset, model), group in frame.groupby(["dataset", "model"]):
        prefix = sweep_config.get("table_prefix", "table1")
        stem = os.path.join(sweep_config.table_dir, f"{prefix}_{dataset}_{model}")
        if "variant" in group:
            group = group.assign(variant=group["variant"].fillna(""))
        records = _summary(group, columns).to_dict("records")
        references = list(sweep_config.get("reference_rows", ()))
        if references:
            records = [{"source": "ours", **r} for r in records]
            records += [dict(r) for r in references]
        seeds = sorted(set(int(s) for s in group["seed"]))
        tables.write_table(
            records,
            stem,
            command=command,
            settings=_table_settings(sweep_config, dataset, model, seeds),
            notes=_table_notes(sweep_config, group),
            pm_digits=3,
        )
        per_run = group.sort_values(["temperature", "seed"])
        per_run.to_csv(stem + "_runs.csv", index=False)
        paths += [stem + ".csv", stem + ".md", stem + "_runs.csv"]
    return paths


def _summary(group, columns) -> pd.DataFrame:
    """Mean and std over seeds per temperature (and variant), with a `status` column when a
    cell diverged."""
    by = ["temperature", "variant"] if "variant" in group else "temperature"
    summary = tables.mean_std(group, by, columns)
    if "status" in group and group["status"].notna().any():
        status = group.groupby(by)["status"].agg(
            lambda v: "; ".join(sorted(set(v.dropna()))) or "ok"
        )
        keys = summary[by].apply(tuple, axis=1) if isinstance(by, list) else summary[by]
        summary["status"] = keys.map(status).fillna("ok")
    return summary


def _table_settings(sweep_config, dataset, model, seeds) -> dict:
    """The settings line of a table: training, adversarial training, seeds and attacks."""
    base, ev = sweep_config.train, sweep_config.eval
    settings = {
        "dataset": dataset,
        "model": model,
        "train_subset": base.train_subset or "all",
        "epochs": base.epochs,
        "batch_size": base.batch_size,
        "lr": base.lr,
        "weight_decay": base.weight_decay,
        "schedule": base.schedule,
        "scale_lr_with_temperature": base.scale_lr_with_temperature,
    }
    if base.adv_train:
        settings["adv_train"] = (
            f"{base.adv_objective} objective, weight {base.adv_weight}, PGD-{base.adv_steps} "
            f"eps={base.adv_eps:.5g} step={base.adv_step_size:.5g} {base.adv_loss} at "
            f"T={base.adv_temperature:g}"
        )
    settings.update(
        {
            "seeds": seeds,
            "eval_examples": ev.num_examples or "all",
            "attacks": f"L-inf eps={ev.eps:.5g} step={ev.step_size:.5g} steps={ev.steps} "
            f"random_start={ev.random_start}",
            "cw_l2": (
                f"{ev.cw_l2_examples} examples, eps_l2={ev.cw_l2_eps}, "
                f"{ev.cw_l2_binary_search_steps}x{ev.cw_l2_max_iterations} iterations"
                if ev.cw_l2_examples
                else "off"
            ),
            "corruptions": _corruption_setting(ev),
        }
    )
    return settings


COLUMNS_NOTE = (
    "Columns: clean, corruption (mean over corruptions and severities), pgd20 (PGD-CE at "
    "the training T), cw (PGD on the C&W margin, L-inf), then diagnostics: pgd20_ce_t1 "
    "(CE at T=1), pgd20_margin, pgd20_targeted_top3, pgd20_dlr, worst_case_pgd (robust to "
    "all of those), autoattack (APGD-CE, APGD-T, FAB-T, Square), worst_case (robust to "
    "every attack, PGD and AutoAttack), masking_gap = pgd20 - worst_case, cw_l2 (robust "
    "accuracy at the L2 radius), cw_l2_median_distance. "
    "Values: mean ± std over seeds (n = seeds); the CSV holds them as numeric `<column>` "
    "and `<column>_std` columns."
)


def _table_notes(sweep_config, group) -> list[str]:
    """The sweep's notes, the columns' meaning and each cell's wall time."""
    notes = list(sweep_config.notes) + [COLUMNS_NOTE]
    if "train/seconds" in group and group["train/seconds"].notna().any():
        times = "; ".join(
            f"{_cell_label(r)}: {r['train/seconds'] / 60:.1f} / {r['eval/seconds'] / 60:.1f}"
            for _, r in group.sort_values(["temperature", "seed"]).iterrows()
            if pd.notna(r.get("train/seconds"))
        )
        notes.append(f"Wall time per cell, training / evaluation (minutes): {times}.")
    if "precision" in group and group["precision"].nunique() == 1:
        notes.append(f"Precision: {group['precision'].iloc[0]} in every cell.")
    if "precision" in group and group["precision"].nunique() > 1:
        by_precision = "; ".join(
            f"{precision}: "
            + ", ".join(
                _cell_label(r) for _, r in cells.sort_values(["temperature", "seed"]).iterrows()
            )
            for precision, cells in group.groupby("precision")
        )
        notes.append(
            f"Precision differs between cells (mixed_precision='auto' per machine): {by_precision}."
        )
    unattacked = _unattacked_cells(group)
    if unattacked:
        notes.append(
            "No attack changed a single prediction of "
            + "; ".join(unattacked)
            + ": the worst case equals the clean accuracy on the attacked images. For a model at "
            "chance this is a constant (or gradient-free) classifier, not robustness: its "
            "robustness columns measure nothing."
        )
    return notes


def _unattacked_cells(group) -> list[str]:
    """The cells whose worst case equals their clean accuracy on the attacked images (> 0)."""
    out = []
    for _, r in group.sort_values(["temperature", "seed"]).iterrows():
        clean = r.get("clean_attacked")
        clean = r.get("clean") if clean is None or pd.isna(clean) else clean
        worst = r.get("worst_case")
        if worst is None or pd.isna(worst) or clean is None or pd.isna(clean) or clean <= 0:
            continue
        if abs(worst - clean) < 1e-9:
            out.append(f"{_cell_label(r)} ({clean:.3f})")
    return out


def _cell_label(r) -> str:
    """`T=70 s0`, with the variant's name if it has one."""
    variant = r.get("variant")
    variant = f" {variant}" if isinstance(variant, str) and variant else ""
    return f"T={r.temperature:g} s{int(r.seed)}{variant}"


def _corruption_setting(ev) -> str:
    names = evaluation.as_list(ev.corruptions)
    if not names:
        return "off"
    source = "official CIFAR-10-C" if ev.cifar10c_dir else "synthesised by tempscale_tf.corruptions"
    severities = ",".join(str(s) for s in evaluation.as_list(ev.severities))
    return f"{len(names)} corruptions x severities {severities}, {source}"


def run_sweep(
    sweep_config, root, command="", progress=False, max_cells=None, only=(), train_only=False
) -> list[str]:
    """Run every cell (skipping finished ones) and rewrite the tables after each cell.

    Args:
      sweep_config: the sweep config (see the module docstring).
      root: the sweep's workdir (one run folder per cell).
      command: the command line, recorded in the tables.
      progress: show progress bars.
      max_cells: run at most this many new (not already finished) cells and skip the other
        unfinished ones; the tables hold every finished cell. 0: only rebuild the tables from
        the finished cells. None: run every cell.
      only: fnmatch patterns of cell folder names (e.g. `*_t70_s1`, `*_madry_eps12`): run only
        the unfinished cells that match one, in the sweep's order (the tables still hold every
        finished cell). A pattern that matches no cell of the sweep is an error. Empty: all.
        Cells run in the sweep's order, except that carried cells (trained earlier, see
        `results_dir`) run first.
      train_only: train the unfinished cells and carry them (`train_cell`; needs a
        `results_dir`) without evaluating them; cells already carried are not new. No tables
        are written. A session can train first, while a whole training still fits, and
        spend the rest on evaluations, which resume across machines at a finer grain.

    Returns:
      the table paths written.
    """
    for t in sweep_config.temperatures:
        check_temperature(t)
    if not sweep_config.seeds or not sweep_config.datasets:
        raise ValueError("a sweep needs at least one dataset and one seed")
    # Seeds outermost: a partial sweep covers every temperature with the first seed first.
    cells = [
        (d, float(t), int(s))
        for s in sweep_config.seeds
        for d in sweep_config.datasets
        for t in sweep_config.temperatures
    ]
    for t, s in sweep_config.get("extra_cells", ()):
        check_temperature(t)
        cells += [(d, float(t), int(s)) for d in sweep_config.datasets]
    cells = [(d, t, s, "", {}) for d, t, s in dict.fromkeys(cells)]
    cells += [
        (d, t, s, name, o)
        for name, t, s, o in _variants(sweep_config)
        for d in sweep_config.datasets
    ]
    results_root = sweep_config.get("results_dir", "")
    if train_only and not results_root:
        raise ValueError("train_only carries the trained cells in the sweep's results_dir; set one")
    configs = [_cell_config(sweep_config.train, d, t, s, o) for d, t, s, _, o in cells]
    names = [
        os.path.basename(cell_dir("", d, c.model, t, s, v))
        for (d, t, s, v, _), c in zip(cells, configs)
    ]
    only = tuple(only or ())
    for pattern in only:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ValueError(f"cell pattern {pattern!r} matches none of the sweep's cells {names}")
    rows, paths, new = {}, [], 0
    start = time.time()
    # Cells trained in an earlier session (carried) are evaluated before any new training starts.
    order = sorted(
        range(len(cells)),
        key=lambda i: not (
            results_root and os.path.isdir(os.path.join(results_root, names[i], IN_PROGRESS))
        ),
    )
    for i in order:
        dataset, temperature, seed, variant, overrides = cells[i]
        config = configs[i]
        chosen = not only or any(fnmatch.fnmatchcase(names[i], p) for p in only)
        workdir = os.path.join(root, names[i])
        results = os.path.join(results_root, names[i]) if results_root else None
        finished = os.path.exists(os.path.join(workdir, "eval.json")) or (
            results is not None and committed_row(config, sweep_config.eval, results) is not None
        )
        if not finished and not chosen:
            logging.info("cell %d/%d: %s not run (not chosen)", i + 1, len(cells), names[i])
            continue
        if max_cells is not None and new >= max_cells and not finished:
            # Skipped, not the end: a finished cell later in the order still enters the tables.
            logging.info("cell %d/%d: not run (max_cells=%d)", i + 1, len(cells), max_cells)
            continue
        if train_only:
            if not finished:
                logging.info("cell %d/%d: %s", i + 1, len(cells), names[i])
                status = train_cell(config, sweep_config.eval, workdir, results, progress)
                new += status != "carried"  # a carried cell is trained already: not a new one
            continue
        logging.info("cell %d/%d: %s T=%g seed=%d", i + 1, len(cells), dataset, temperature, seed)
        row = run_cell(config, sweep_config.eval, workdir, progress, results)
        if variant:
            row = {**row, "variant": variant, **{k: v for k, v in overrides.items()}}
        rows[i] = row
        new += 0 if finished else 1
        paths = assemble_tables([rows[k] for k in sorted(rows)], sweep_config, command)
        elapsed = time.time() - start
        logging.info("cell %d/%d done (%.0f s elapsed)", i + 1, len(cells), elapsed)
    return sorted(set(paths))
