"""Evaluation columns, gradient-masking diagnostics, the sweep and the evaluate script."""

import copy
import json
import os

import keras
import ml_collections
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import run_launcher

from tempscale_tf import attacks, data, evaluation, sweep, tables


def quick_eval(**overrides):
    c = evaluation.default_eval_config()
    c.num_examples, c.batch_size, c.steps = 120, 120, 10
    c.corruptions, c.severities = ("gaussian_noise", "contrast"), (1, 5)
    c.cw_l2_examples, c.cw_l2_binary_search_steps, c.cw_l2_max_iterations = 20, 3, 30
    c.random_start = False
    c.autoattack_steps, c.autoattack_queries = 10, 100
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def linear_digits_model():
    """Softmax regression on digits (about 95% test accuracy), trained with plain Keras."""
    keras.utils.set_random_seed(0)
    x, y = data.load_arrays("digits", "train")
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=15, batch_size=128, verbose=0)
    return model


def test_columns_are_consistent(linear_digits_model):
    row = evaluation.evaluate_model(
        linear_digits_model, 1.0, "digits", quick_eval(), progress=False
    )
    # Clean and corruption accuracies recomputed independently on the same 120 images.
    x, y = evaluation.subset_arrays("digits", "test", None, 120)
    predict = lambda images: np.argmax(linear_digits_model.predict(images, verbose=0), -1)
    assert row["clean"] == pytest.approx(np.mean(predict(x) == y))
    assert row["clean"] > 0.85
    from tempscale_tf import corruptions

    noisy = corruptions.corrupt(x, "gaussian_noise", 5, seed=0)
    assert row["corruption/gaussian_noise_5"] == pytest.approx(np.mean(predict(noisy) == y))
    # Accuracies are fractions of the 120 images.
    for column in ("clean", "pgd20", "cw", "pgd20_margin", "pgd20_dlr", "worst_case", "cw_l2"):
        count = row[column] * (120 if column != "cw_l2" else 20)
        assert count == pytest.approx(round(count), abs=1e-6), column
    attacks = ("pgd20", "cw", "pgd20_margin", "pgd20_targeted_top3", "pgd20_dlr")
    assert row["worst_case"] <= min(row[a] for a in attacks) + 1e-12
    assert row["worst_case"] <= min(row["autoattack"], row["worst_case_pgd"]) + 1e-12
    assert row["autoattack"] <= row["clean"]
    assert all(row[a] <= row["clean"] for a in attacks)
    # Corruption accuracy is the mean of the per-corruption means of the per-severity numbers.
    per = [row[f"corruption/{n}"] for n in ("gaussian_noise", "contrast")]
    assert row["corruption"] == pytest.approx(np.mean(per))
    assert row["corruption/contrast"] == pytest.approx(
        np.mean([row["corruption/contrast_1"], row["corruption/contrast_5"]])
    )
    # Independent recomputation of the clean column.
    x, y = data.load_arrays("digits", "test")
    keep = np.sort(np.random.default_rng(12345).permutation(len(y))[:120])
    ref = np.mean(np.argmax(linear_digits_model.predict(x[keep], verbose=0), -1) == y[keep])
    assert row["clean"] == pytest.approx(ref)


def test_masking_gap_exposes_saturated_softmax(linear_digits_model):
    """Logits x 1e4 (an effective T of 1e-4): CE at T=1 sees zero gradients, margin/DLR do not."""
    scaled = keras.Sequential([linear_digits_model, keras.layers.Rescaling(1e4)])
    config = quick_eval(corruptions=(), cw_l2_examples=0, eps=16 / 255, step_size=4 / 255)
    plain = evaluation.evaluate_model(linear_digits_model, 1.0, "digits", config, progress=False)
    masked = evaluation.evaluate_model(scaled, 1.0, "digits", config, progress=False)
    assert masked["clean"] == pytest.approx(plain["clean"])
    assert masked["pgd20_ce_t1"] > plain["pgd20_ce_t1"] + 0.3  # looks robust: masked gradients
    assert masked["worst_case"] == pytest.approx(plain["worst_case"], abs=0.05)
    assert masked["masking_gap"] > 0.3 and plain["masking_gap"] < 0.1
    # Attacking CE at the model's own temperature (1e4) removes the masking.
    at_own_t = evaluation.evaluate_model(scaled, 1e4, "digits", config, progress=False)
    assert at_own_t["pgd20"] == pytest.approx(plain["pgd20"], abs=0.05)


def test_killed_evaluation_resumes_after_its_last_finished_stage(
    linear_digits_model, tmp_path, monkeypatch
):
    small = dict(num_examples=60, batch_size=60, autoattack_steps=3, autoattack_queries=20)
    config = quick_eval(cw_l2_examples=4, steps=3, **small)
    reference = evaluation.evaluate_model(
        linear_digits_model, 2.0, "digits", config, progress=False
    )
    partial = tmp_path / "eval_partial.json"
    calls = []

    def counted(name, real, fail=False):
        def stage(*args, **kwargs):
            calls.append(name)
            if fail:
                raise KeyboardInterrupt(f"killed during {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(evaluation, name, stage)

    real_pgd, real_corruption = evaluation._pgd_columns, evaluation._corruption_columns
    counted("_corruption_columns", real_corruption)
    counted("_pgd_columns", real_pgd, fail=True)

    def run(model=linear_digits_model, cfg=config):
        return evaluation.evaluate_model(
            model, 2.0, "digits", cfg, progress=False, resume_path=str(partial)
        )

    with pytest.raises(KeyboardInterrupt):
        run()
    saved = json.loads(partial.read_text())
    assert sorted(saved["stages"]) == ["clean", "corruption"] and saved["seconds"] > 0
    # Each stage holds its own columns only (not the row as later stages extended it).
    assert not any(k.startswith("corruption") for k in saved["stages"]["clean"])
    # The rerun starts at the PGD stage: the corruptions are not recomputed. It gets a copy of
    # the model, as a new process would rebuild it: the same weights under other layer names.
    copy = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    copy.set_weights(linear_digits_model.get_weights())
    assert copy.weights[0].path != linear_digits_model.weights[0].path
    counted("_pgd_columns", real_pgd)
    calls.clear()
    row = run(copy)
    assert calls == ["_pgd_columns"]
    assert row["eval/seconds"] > saved["seconds"]
    assert sorted(json.loads(partial.read_text())["stages"]) == [
        "autoattack",
        "clean",
        "corruption",
        "cw_l2",
        "pgd",
    ]
    for key, value in reference.items():
        if not key.startswith("eval/seconds"):
            assert row[key] == pytest.approx(value, nan_ok=True), key
    # Each stage's time (the reused ones from the first run), and each AutoAttack attack's.
    stage_seconds = [row[f"eval/seconds/{s}"] for s in ("clean", "corruption", "pgd", "cw_l2")]
    assert all(t >= 0 for t in stage_seconds) and sum(stage_seconds) < row["eval/seconds"]
    assert row["eval/seconds/clean"] == saved["stages"]["clean"]["eval/seconds/clean"]
    assert sorted(k for k in row if k.startswith("eval/seconds/autoattack/")) == [
        f"eval/seconds/autoattack/{a}" for a in ("apgd-ce", "apgd-t", "fab-t", "square")
    ]
    # Other settings, other weights or a corrupt file: every stage is computed again.
    for change in ("settings", "weights", "corrupt"):
        calls.clear()
        cfg, model = config, linear_digits_model
        if change == "settings":
            cfg = quick_eval(cw_l2_examples=4, steps=4, **small)
        elif change == "weights":
            model = keras.models.clone_model(linear_digits_model)
            model.set_weights([w * 1.01 for w in linear_digits_model.get_weights()])
        else:
            partial.write_text('{"key": ')
        run(model, cfg)
        assert calls == ["_corruption_columns", "_pgd_columns"], change
    # A model without weights cannot be identified: nothing is saved.
    partial.unlink()
    run(lambda images, training=False: linear_digits_model(images))
    assert not partial.exists()


def test_evaluation_killed_inside_autoattack_resumes_at_its_next_batch(
    linear_digits_model, tmp_path, monkeypatch
):
    config = quick_eval(
        corruptions=(),
        cw_l2_examples=0,
        steps=3,
        num_examples=60,
        batch_size=20,
        autoattack_steps=3,
        autoattack_queries=20,
    )
    reference = evaluation.evaluate_model(
        linear_digits_model, 2.0, "digits", config, progress=False
    )
    # Batch by batch equals one AutoAttack call over the same batches (the library's route).
    images, labels = evaluation.subset_arrays("digits", config.split, None, 60)
    whole = attacks.autoattack(
        linear_digits_model,
        images,
        labels,
        config.eps,
        seed=config.seed,
        batch_size=20,
        progress=False,
        steps=3,
        queries=20,
    )
    assert reference["autoattack"] == pytest.approx(whole.robust_accuracy)
    for name, value in whole.per_attack.items():
        assert reference[f"autoattack/{name}"] == pytest.approx(value), name
    assert 0 < reference["autoattack"] < reference["clean"]

    partial, attacked = tmp_path / "eval_partial.json", []
    real = evaluation._autoattack_batch

    def counted(model, x, y, cfg, fail_on=None):
        attacked.append(len(y))
        if len(attacked) == fail_on:
            raise KeyboardInterrupt("killed inside AutoAttack")
        return real(model, x, y, cfg)

    def run():
        return evaluation.evaluate_model(
            linear_digits_model, 2.0, "digits", config, progress=False, resume_path=str(partial)
        )

    monkeypatch.setattr(evaluation, "_autoattack_batch", lambda *a: counted(*a, fail_on=3))
    with pytest.raises(KeyboardInterrupt):
        run()
    saved = json.loads(partial.read_text())
    assert sorted(saved["stages"]) == ["clean", "pgd"]
    assert sorted(saved["parts"]["autoattack"]) == ["0", "1"]  # the third batch was killed
    part_seconds = sum(p["seconds"] for p in saved["parts"]["autoattack"].values())
    assert saved["seconds"] >= part_seconds > 0
    # The rerun attacks only the third batch and gives the uninterrupted row.
    attacked.clear()
    monkeypatch.setattr(evaluation, "_autoattack_batch", lambda *a: counted(*a))
    row = run()
    assert attacked == [20]
    for key, value in reference.items():
        if not key.startswith("eval/seconds"):
            assert row[key] == pytest.approx(value, nan_ok=True), key
    assert row["eval/seconds/autoattack"] >= part_seconds
    assert row["eval/seconds"] >= saved["seconds"]
    finished = json.loads(partial.read_text())
    assert "parts" not in finished and "autoattack" in finished["stages"]


def _threshold_model(images, training=False):
    """Class 1 iff pixel (0, 0, 0) > 0.5 (logits (0.5, pixel)); a callable like a Keras model."""
    pixel = tf.reshape(images[:, 0, 0, 0], [-1, 1])
    return tf.concat([tf.fill(tf.shape(pixel), 0.5), pixel], axis=-1)


@pytest.mark.parametrize("num_correct", [9, 0])
def test_cw_l2_median_distance_is_over_correct_examples(monkeypatch, num_correct):
    """The median is numpy's median of the distances of the correctly classified examples.

    C&W is replaced by a stub returning fixed random distances (+inf for one correct
    example: a failed attack), so the expected numbers come from numpy alone. With 9 of 25
    examples correct, counting the others as distance 0 would give a median of 0; with none
    correct the median is NaN.
    """
    rng = np.random.default_rng(0)
    n, eps = 25, 1.0
    images = rng.uniform(0.0, 1.0, (n, 2, 2, 1)).astype("float32")
    predicted = (images[:, 0, 0, 0] > 0.5).astype(int)
    correct = np.zeros(n, bool)
    correct[rng.permutation(n)[:num_correct]] = True
    labels = np.where(correct, predicted, 1 - predicted)
    distance = rng.uniform(0.2, 3.0, n).astype("float32")
    if num_correct:
        distance[np.flatnonzero(correct)[0]] = np.inf
    batches = []

    def fake_cw(model, x, y, **kwargs):
        x = np.asarray(x)
        index = [int(np.flatnonzero((images == row).all(axis=(1, 2, 3)))[0]) for row in x]
        batches.append(index)
        l2 = distance[index]
        return attacks.CWResult(tf.constant(x), tf.constant(l2), tf.constant(np.isfinite(l2)))

    monkeypatch.setattr(evaluation.attacks_lib, "carlini_wagner_l2", fake_cw)
    out = evaluation.cw_l2_accuracy(
        _threshold_model, images, labels, eps, 2, 10, 1e-2, jit_compile=False, batch_size=7
    )
    assert sum(batches, []) == list(range(n)) and len(batches) == 4
    np.testing.assert_array_equal(evaluation.predict_labels(_threshold_model, images), predicted)
    assert out["cw_l2"] == pytest.approx(np.mean(correct & (distance > eps)))
    if num_correct:
        assert out["cw_l2_median_distance"] == pytest.approx(np.median(distance[correct]))
        assert 0 < out["cw_l2_median_distance"] < np.inf
    else:
        assert np.isnan(out["cw_l2_median_distance"])


def test_tiny_sweep_writes_table_and_resumes(tmp_path):
    import configs.sweep_digits as sweep_digits

    config = sweep_digits.get_config("tiny")
    config.table_dir = str(tmp_path / "tables")
    runs_csv = tmp_path / "tables" / "table1_digits_small_cnn_runs.csv"
    # One cell late in the order (T=30, seed 0); then the tables alone (max_cells=0) hold it,
    # though the cell before it (T=1, seed 0) is unfinished.
    only_30 = config.copy_and_resolve_references()
    only_30.temperatures, only_30.seeds = [30.0], [0]
    sweep.run_sweep(only_30, str(tmp_path / "runs"), command="pytest", max_cells=1)
    runs_csv.unlink()
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest", max_cells=0)
    assert pd.read_csv(runs_csv)[["temperature", "seed"]].values.tolist() == [[30.0, 0]]
    assert not (tmp_path / "runs" / "digits_small_cnn_t1_s0").exists()
    paths = sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    md = tmp_path / "tables" / "table1_digits_small_cnn.md"
    assert str(md) in paths and md.exists()
    frame = tables.read_table(tmp_path / "tables" / "table1_digits_small_cnn.csv")
    assert frame["temperature"].tolist() == [1.0, 30.0] and frame["n"].tolist() == [2, 2]
    assert list(frame.columns[2:6]) == ["clean", "clean_std", "corruption", "corruption_std"]
    runs = pd.read_csv(tmp_path / "tables" / "table1_digits_small_cnn_runs.csv")
    assert len(runs) == 4
    # The CSV is numeric: the mean and the standard deviation over seeds (ddof 1).
    at_1 = runs[runs.temperature == 1.0]
    assert frame["clean"][0] == pytest.approx(at_1["clean"].mean())
    assert frame["pgd20_std"][0] == pytest.approx(np.std(at_1["pgd20"], ddof=1))
    text = md.read_text()
    # The Markdown shows each pair as "mean ± std".
    mean, std = at_1["clean"].mean(), np.std(at_1["clean"], ddof=1)
    assert f"{mean:.3f} ± {std:.3f}" in text and "clean_std" not in text
    assert "Command: `pytest`" in text and "seeds=[0, 1]" in text and "eps=" in text
    # Each finished cell deletes its stage record (evaluation.EvalStages).
    assert not list((tmp_path / "runs").rglob(sweep.EVAL_PARTIAL))
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("eval.json")}
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")  # resumes: nothing to do
    assert stamps == {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("eval.json")}
    # Changing only the AutoAttack settings recomputes only those columns, not the cell.
    config.eval.autoattack_queries = 60
    rows_before = {p: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("eval.json")}
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    for path, before in rows_before.items():
        after = json.loads(path.read_text())
        assert after["eval/autoattack_queries"] == 60 and after["clean"] == before["clean"]
        assert after["corruption"] == before["corruption"]
    config.temperatures = [0.0]
    with pytest.raises(ValueError, match="temperature"):
        sweep.run_sweep(config, str(tmp_path / "runs"))


def test_evaluate_script(tmp_path):
    import configs.digits_small as digits_small
    from tempscale_tf import training

    config = digits_small.get_config("smoke")
    config.train_subset, config.model_kwargs.width = 128, 4
    config.temperature = 3.0
    training.train(config, tmp_path / "run", progress=False)
    quick = ["--eval_config=configs/eval_cifar.py:quick", "--num_examples=32", "--steps=3"]
    quick += ["--cw_l2_examples=4", "--progress=false", f"--csv={tmp_path / 'rows.csv'}"]
    result = run_launcher("evaluate", f"--workdir={tmp_path / 'run'}", *quick)
    assert result.returncode == 0, result.stderr[-2000:]
    row = tables.read_table(tmp_path / "rows.csv").iloc[0]
    assert row["temperature"] == 3.0 and row["eval/steps"] == 3 and "evaluate.py" in row["command"]
    assert (tmp_path / "run" / "eval.json").exists()
    # The same model from its exported .keras file (the form of the committed models): the
    # temperature comes from tempscale_info.json and eval.json goes to --output_dir.
    keras_file = tmp_path / "run" / "export" / "model.keras"
    result = run_launcher(
        "evaluate",
        f"--keras_model={keras_file}",
        "--dataset=digits",
        f"--output_dir={tmp_path / 'out'}",
        *quick,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from_file = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert from_file["temperature"] == 3.0
    assert from_file["clean"] == row["clean"] and from_file["pgd20"] == row["pgd20"]
    assert not (keras_file.parent / "eval.json").exists()
    # A missing run and two model sources at once: tests/test_bad_inputs.py.


def test_sweep_commits_cells_and_skips_them_anywhere(tmp_path, monkeypatch):
    """Finished cells are copied to `results_dir`; a new machine (no run folders) skips them;
    extra cells, a diverged cell, clean on the whole split and the reference rows."""
    import shutil

    import configs.sweep_digits as sweep_digits

    config = sweep_digits.get_config("tiny")
    config.table_dir = str(tmp_path / "tables")
    config.results_dir = str(tmp_path / "committed")
    config.temperatures, config.seeds = [1.0], [0]
    config.extra_cells = [(1e-6, 0)]  # made to diverge below
    from tempscale_tf import training

    real_train = training.train

    def train(config, workdir, **kwargs):
        if config.temperature < 1e-3:
            raise training.TrainingDivergedError("the training loss is nan at step 2. More.")
        return real_train(config, workdir, **kwargs)

    monkeypatch.setattr(training, "train", train)
    from tempscale_tf import distribute

    # "auto" picks float32 on this (simulated) machine; the variant asks for bfloat16.
    config.train.mixed_precision = "auto"
    auto = {"mixed": False}
    real_resolve = distribute.resolve_mixed_precision
    monkeypatch.setattr(
        distribute,
        "resolve_mixed_precision",
        lambda s: (auto["mixed"], "test") if s == "auto" else real_resolve(s),
    )
    config.eval.clean_examples = 0
    config.reference_rows = [{"source": "paper", "temperature": 1.0, "clean": 0.9}]
    config.variants = [
        {
            "name": "wd0",
            "temperature": 1.0,
            "seed": 0,
            "overrides": {"weight_decay": 0.0, "mixed_precision": True},
        }
    ]
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    cells = sorted(p.name for p in (tmp_path / "committed").iterdir())
    assert cells == [
        "digits_small_cnn_t1_s0",
        "digits_small_cnn_t1_s0_wd0",
        "digits_small_cnn_t1e-06_s0",
    ]
    variant = json.loads((tmp_path / "committed" / cells[1] / "config.json").read_text())
    assert variant["weight_decay"] == 0.0
    for cell in cells:
        assert {p.name for p in (tmp_path / "committed" / cell).iterdir()} == set(
            sweep.RESULT_FILES
        )
    diverged = json.loads((tmp_path / "committed" / cells[2] / "eval.json").read_text())
    assert diverged["status"] == "diverged: the training loss is nan at step 2"
    ok = json.loads((tmp_path / "committed" / cells[0] / "eval.json").read_text())
    assert ok["eval/clean_examples"] == 360 and "clean_attacked" in ok
    frame = tables.read_table(tmp_path / "tables" / "table1_digits_small_cnn.csv")
    assert frame["source"].tolist() == ["ours", "ours", "ours", "paper"]
    assert frame["variant"].fillna("").tolist()[:3] == ["", "", "wd0"]
    assert "diverged" in str(frame["status"][0]) and frame["status"][1] == "ok"  # T=1e-6, T=1
    md = (tmp_path / "tables" / "table1_digits_small_cnn.md").read_text()
    assert "Wall time per cell" in md
    assert ok["precision"] == "float32"
    assert "Precision differs between cells" in md and "mixed_bfloat16: T=1 s0 wd0" in md
    # A new machine, where "auto" picks bfloat16: no run folders. Nothing is trained or
    # evaluated again (the committed cells ran as "auto" asked, in float32 there).
    auto["mixed"] = True
    shutil.rmtree(tmp_path / "runs")
    stamps = {p: p.stat().st_mtime for p in (tmp_path / "committed").rglob("*.json")}
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    assert not (tmp_path / "runs").exists()
    assert stamps == {p: p.stat().st_mtime for p in (tmp_path / "committed").rglob("*.json")}
    # Other training settings: the committed cell no longer counts and is recomputed.
    config.train.epochs = 2
    config.extra_cells, config.variants = [], []  # one cell is enough to show it
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    redone = json.loads((tmp_path / "committed" / cells[0] / "config.json").read_text())
    assert redone["epochs"] == 2


def test_default_num_examples_uses_a_smaller_split_whole():
    """The CIFAR-sized default (1000) on digits' 360 test images: the whole split, in order."""
    x, y = evaluation.subset_arrays("digits", "test", None, 1000)
    x_all, y_all = data.load_arrays("digits", "test")
    assert len(y) == 360
    np.testing.assert_array_equal(y, y_all)
    np.testing.assert_allclose(x, x_all)
    x_small, _ = evaluation.subset_arrays("digits", "test", None, 100)
    assert len(x_small) == 100


def test_eval_settings_of_older_eval_json_still_match():
    """Cells evaluated when `corruptions`/`severities` were comma-separated strings compare
    equal to the same settings as tuples (so committed cells are not recomputed)."""
    config = evaluation.default_eval_config()
    settings = sweep._eval_settings(config)
    assert settings["severities"] == [1, 2, 3, 4, 5] and "fog" in settings["corruptions"]
    older = dict(settings, corruptions=",".join(settings["corruptions"]), severities="1,2,3,4,5")
    assert sweep._normalized(older) == settings
    older["severities"] = "1,5"
    assert sweep._normalized(older) != settings


def test_constant_classifier_is_flagged_not_robust():
    """A constant model survives every attack (no prediction can change): its worst case equals
    its clean accuracy, and the sweep's table notes call that out instead of robustness."""
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.zeros_like(kernel), np.eye(10, dtype=np.float32)[3]])
    config = quick_eval(num_examples=60, batch_size=60, steps=3, cw_l2_examples=4)
    config.autoattack_steps, config.autoattack_queries, config.corruptions = 3, 20, ()
    row = evaluation.evaluate_model(model, 70.0, "digits", config, progress=False)
    _, y = evaluation.subset_arrays("digits", "test", None, 60)
    assert row["clean"] == pytest.approx(np.mean(y == 3)) and row["clean"] > 0
    for column in ("pgd20", "pgd20_ce_t1", "cw", "pgd20_dlr", "autoattack", "worst_case"):
        assert row[column] == pytest.approx(row["clean"]), column
    group = pd.DataFrame(
        [
            {
                "temperature": 70.0,
                "seed": 0,
                "clean": 0.1,
                "worst_case": row["worst_case"],
                "clean_attacked": row["clean"],
            },
            {
                "temperature": 1.0,
                "seed": 0,
                "clean": 0.93,
                "worst_case": 0.0,
                "clean_attacked": 0.93,
            },
            {
                "temperature": 50.0,
                "seed": 1,
                "clean": 0.4,
                "worst_case": 0.4,
                "clean_attacked": float("nan"),
                "variant": "w3",
            },
        ]
    )
    notes = sweep._table_notes(ml_collections.ConfigDict({"notes": []}), group)
    flagged = [n for n in notes if n.startswith("No attack changed")]
    assert len(flagged) == 1
    assert f"T=70 s0 ({row['clean']:.3f})" in flagged[0] and "T=50 s1 w3 (0.400)" in flagged[0]
    assert "T=1 " not in flagged[0]


def test_sweep_only_runs_the_matching_unfinished_cells(tmp_path, monkeypatch):
    """`only` picks cells by folder-name pattern, in the sweep's order; finished cells outside
    it still enter the tables; a pattern that matches nothing is an error, not a no-op."""
    import configs.sweep_digits as sweep_digits

    config = sweep_digits.get_config("tiny")
    config.temperatures, config.seeds = [1.0, 30.0], [0]
    config.extra_cells = [(30.0, 1)]
    config.variants = [{"name": "w3", "temperature": 1.0, "seed": 0, "overrides": {}}]
    ran, tabled = [], []
    monkeypatch.setattr(
        sweep,
        "run_cell",
        lambda config, eval_config, workdir, progress, results: (
            ran.append(os.path.basename(workdir)) or {"workdir": workdir}
        ),
    )
    monkeypatch.setattr(
        sweep,
        "assemble_tables",
        lambda rows, c, command: tabled.append([os.path.basename(r["workdir"]) for r in rows])
        or [],
    )
    root = tmp_path / "runs"
    sweep.run_sweep(config, str(root), only=["*_s0_w3", "*_t30_s1"])
    assert ran == ["digits_small_cnn_t30_s1", "digits_small_cnn_t1_s0_w3"]
    # A finished cell (its eval.json) outside the patterns is read into the tables again.
    (root / "digits_small_cnn_t1_s0").mkdir(parents=True)
    (root / "digits_small_cnn_t1_s0" / "eval.json").write_text("{}")
    ran.clear()
    sweep.run_sweep(config, str(root), only=["*_t30_s1"], max_cells=1)
    assert ran == ["digits_small_cnn_t1_s0", "digits_small_cnn_t30_s1"]
    assert tabled[-1] == ran
    with pytest.raises(ValueError, match="'\\*_t70_s0' matches none"):
        sweep.run_sweep(config, str(root), only=["*_t70_s0"])


class _Killed(Exception):
    """Stands for the process being killed."""


def test_sweep_trains_first_and_a_new_machine_evaluates_the_carried_cell(tmp_path, monkeypatch):
    """`train_only` trains and carries a cell without evaluating it (and counts a carried cell
    as done); a later sweep on a new machine evaluates the carried weights, before training any
    cell that comes earlier in the sweep's order."""
    import configs.sweep_digits as sweep_digits
    from tempscale_tf import training

    config = sweep_digits.get_config("tiny")
    config.table_dir = str(tmp_path / "tables")
    config.results_dir = str(tmp_path / "committed")
    config.temperatures, config.seeds = [0.5, 1.0], [0]
    cell = "digits_small_cnn_t1_s0"
    carry = tmp_path / "committed" / cell / sweep.IN_PROGRESS
    monkeypatch.setattr(
        evaluation.EvalStages, "run", lambda *a: pytest.fail("evaluated in train_only")
    )
    paths = sweep.run_sweep(config, str(tmp_path / "a"), only=["*_t1_s0"], train_only=True)
    assert paths == [] and not (tmp_path / "tables").exists()
    assert sweep.carried_training(config.train, str(carry))
    assert not (tmp_path / "a" / cell / "eval.json").exists()
    model, _ = training.load_run(tmp_path / "a" / cell)
    carried, _ = training.load_run(carry, checkpoint=str(carry / sweep.CARRIED_WEIGHTS))
    for w, c in zip(model.weights, carried.weights):
        np.testing.assert_array_equal(w.numpy(), c.numpy())
    monkeypatch.undo()
    expected = evaluation.evaluate_model(model, 1.0, "digits", config.eval, progress=False)

    # Other training settings: the carry is checked (and its mismatch logged) once, then trained.
    checks = []
    real_check = sweep._same_training
    monkeypatch.setattr(sweep, "_same_training", lambda *a: checks.append(a) or real_check(*a))

    def killed(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(training, "train", killed)
    changed = copy.deepcopy(config)
    changed.train.lr *= 2
    with pytest.raises(_Killed):
        sweep.run_sweep(changed, str(tmp_path / "c"), only=["*_t1_s0"], train_only=True)
    assert [c[0] for c in checks] == [str(carry)]
    monkeypatch.undo()

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained again"))
    only_t1 = ["*_t1_s0"]
    assert sweep.run_sweep(config, str(tmp_path / "b"), only=only_t1, train_only=True) == []
    # A new machine evaluates the carried T=1 cell first (training T=0.5 would fail here).
    sweep.run_sweep(config, str(tmp_path / "b"), command="pytest", max_cells=1)
    assert not carry.exists() and not (tmp_path / "b" / "digits_small_cnn_t0.5_s0").exists()
    row = json.loads((tmp_path / "committed" / cell / "eval.json").read_text())
    for key, value in expected.items():
        if "seconds" not in key:
            assert row[key] == pytest.approx(value, nan_ok=True), key
    no_results = sweep_digits.get_config("tiny")
    with pytest.raises(ValueError, match="results_dir"):
        sweep.run_sweep(no_results, str(tmp_path / "d"), train_only=True)


def test_sweep_carries_a_trained_cell_to_a_new_machine(tmp_path, monkeypatch):
    """A cell killed while evaluating carries its trained weights and finished stages in
    `<results_dir>/<cell>/in_progress/`; a new machine (no run folders) does not train it again,
    reuses the finished stages, and gets the row of an uninterrupted evaluation."""
    import shutil

    import configs.sweep_digits as sweep_digits
    from tempscale_tf import training

    config = sweep_digits.get_config("tiny")
    config.table_dir = str(tmp_path / "tables")
    config.results_dir = str(tmp_path / "committed")
    config.temperatures, config.seeds = [1.0], [0]
    cell = "digits_small_cnn_t1_s0"
    carry = tmp_path / "committed" / cell / sweep.IN_PROGRESS
    real_run = evaluation.EvalStages.run
    started, computed = [], []

    def killed_in_the_second_stage(self, name, compute):
        started.append(name)
        if len(started) == 2:
            raise _Killed()
        return real_run(self, name, compute)

    monkeypatch.setattr(evaluation.EvalStages, "run", killed_in_the_second_stage)
    with pytest.raises(_Killed):
        sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    assert sorted(p.name for p in carry.iterdir()) == sorted(
        [*sweep.TRAINED_FILES, sweep.EVAL_PARTIAL, "checkpoint"]
        + ["weights-1.index", "weights-1.data-00000-of-00001"]
    )
    assert list(json.loads((carry / sweep.EVAL_PARTIAL).read_text())["stages"]) == started[:1]
    assert not (tmp_path / "committed" / cell / "eval.json").exists()
    assert sweep.carried_training(config.train, str(carry))
    other = config.train.copy_and_resolve_references()
    other.epochs += 1
    assert not sweep.carried_training(other, str(carry))
    # What an uninterrupted evaluation of the trained weights gives (same machine, same seeds).
    model, _ = training.load_run(tmp_path / "runs" / cell)
    expected = evaluation.evaluate_model(model, 1.0, "digits", config.eval, progress=False)

    # A new machine: no run folders. Training must not run; the first stage is reused. Worse,
    # its run folder holds an unfinished training of its own (no metrics.json, other weights):
    # the carried weights, not those, are evaluated.
    shutil.rmtree(tmp_path / "runs")
    for w in model.trainable_weights:
        w.assign(w + 0.5)
    tf.train.Checkpoint(model=model).save(str(tmp_path / "runs" / cell / "checkpoints" / "ckpt"))
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained again"))

    def recording(self, name, compute):
        if name not in self.done:
            computed.append(name)
        return real_run(self, name, compute)

    monkeypatch.setattr(evaluation.EvalStages, "run", recording)
    sweep.run_sweep(config, str(tmp_path / "runs"), command="pytest")
    assert computed and started[0] not in computed and started[1] in computed
    assert {p.name for p in (tmp_path / "committed" / cell).iterdir()} == set(sweep.RESULT_FILES)
    row = json.loads((tmp_path / "committed" / cell / "eval.json").read_text())
    for key, value in expected.items():
        if "seconds" not in key:
            assert row[key] == pytest.approx(value, nan_ok=True), key
    committed = json.loads((tmp_path / "committed" / cell / "history.json").read_text())
    assert committed and row["train/accuracy"] is not None
