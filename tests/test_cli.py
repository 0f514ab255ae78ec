"""The entry scripts' shared flag handling (tempscale_tf.cli) and launcher outputs."""

import json

import pytest
from conftest import run_launcher


def test_top_level_flag_wins_over_config_flag(tmp_path):
    """`--temperature` overrides `--config.temperature`, whichever comes first. (validate_config
    checks the temperature before the epochs, so the error says which value was used.)"""
    smoke = ["--config=configs/digits_small.py:smoke", f"--workdir={tmp_path}"]
    result = run_launcher("train", *smoke, "--config.temperature=5", "--temperature=-7")
    assert result.returncode == 2 and "received -7" in result.stderr
    result = run_launcher(
        "train", *smoke, "--temperature=7", "--config.temperature=-5", "--epochs=0"
    )
    assert result.returncode == 2 and "epochs" in result.stderr and "-5" not in result.stderr
    result = run_launcher("train", *smoke, "--config.temperature=-5")
    assert result.returncode == 2 and "received -5" in result.stderr


def test_train_max_steps_does_not_claim_metrics(tmp_path):
    """A --max_steps stop says it stopped; it does not claim a metrics.json it did not write."""
    flags_ = ["--config=configs/digits_small.py:smoke", f"--workdir={tmp_path}", "--progress=false"]
    result = run_launcher("train", *flags_, "--max_steps=3", "--config.model_kwargs.width=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Stopped at step 3" in result.stdout
    assert "metrics.json" not in result.stdout and not (tmp_path / "metrics.json").exists()
    result = run_launcher("train", *flags_, "--config.model_kwargs.width=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Wrote {tmp_path / 'metrics.json'}" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 * (1437 // 128)


@pytest.mark.parametrize("env", [{}, {"TEMPSCALE_TRACEBACK": "1"}])
def test_user_error_traceback_only_on_request(tmp_path, env):
    result = run_launcher(
        "train",
        "--config=configs/digits_small.py:smoke",
        "--lr=-1",
        f"--workdir={tmp_path}",
        env=env,
    )
    assert result.returncode != 0
    assert ("Traceback" in result.stderr) == bool(env)


def test_time_to_accuracy_table(tmp_path):
    """Cumulative training minutes and the first epoch at each threshold, from the histories."""
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": "m", "temperature": 1.0, "batch_size": 100, "mixed_precision": True}
    history = [
        {"epoch": 0, "step": 10, "test/accuracy": 0.85, "train/images_per_sec": 10.0},
        {
            "epoch": 1,
            "step": 20,
            "test/accuracy": 0.91,
            "train/seconds": 60.0,
            "train/images_per_sec": 1.0,
        },
        {
            "epoch": 2,
            "step": 30,
            "test/accuracy": 0.935,
            "train/seconds": 120.0,
            "train/images_per_sec": 1.0,
        },
    ]
    (run / "config.json").write_text(json.dumps(config))
    (run / "history.json").write_text(json.dumps(history))
    out = tmp_path / "tta"
    result = run_launcher("time_to_accuracy", f"--workdirs={run}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    import pandas as pd

    row = pd.read_csv(f"{out}.csv", comment="#").iloc[0]
    # epoch 1: 10 steps x 100 images / 10 img/s = 100 s; then +60 s, +120 s.
    assert row["training_minutes"] == pytest.approx(280 / 60)
    assert row["minutes_to_0.8"] == pytest.approx(100 / 60)
    assert row["minutes_to_0.9"] == pytest.approx(160 / 60)
    assert row["minutes_to_0.93"] == pytest.approx(280 / 60)
    assert row["run"] == "m T=1 bfloat16" and row["final_test_accuracy"] == 0.935


def test_demo_writes_under_its_workdir_and_leaves_the_checkout_clean(tmp_path, repo_root):
    """`make demo` must not rewrite the committed tables/demo_digits: its table goes to the
    workdir unless `--update_committed` asks for the committed one."""
    committed = repo_root / "tables" / "demo_digits.csv"
    before = committed.read_bytes()
    result = run_launcher("demo", f"--workdir={tmp_path}", "--epochs=1", "--temperatures=1,50*")
    assert result.returncode == 0, result.stderr[-2000:]
    assert committed.read_bytes() == before
    from tempscale_tf import tables

    frame = tables.read_table(tmp_path / "demo_digits.csv")
    assert frame["temperature"].tolist() == [1.0, 50.0]
    # The lr x T row: lr x 50 and weight decay / 50 (the digits config: lr 0.05, wd 5e-4).
    assert frame["lr"].tolist() == pytest.approx([0.05, 2.5])
    assert frame["weight_decay"].tolist() == pytest.approx([5e-4, 1e-5])
    assert ((frame["clean_accuracy"] >= 0) & (frame["clean_accuracy"] <= 1)).all()
    both = run_launcher("demo", "--update_committed", "--table=x", f"--workdir={tmp_path}")
    assert both.returncode == 2 and "--update_committed" in both.stderr


def test_command_line_drops_named_flags_in_every_spelling():
    from tempscale_tf import cli

    argv = ["launch/sweep.py", "--config=c.py", "--assemble_only", "--workdir=w x", "-max_cells=1"]
    assert cli.command_line(argv=argv) == (
        "python launch/sweep.py --config=c.py --assemble_only '--workdir=w x' -max_cells=1"
    )
    spellings = ("--assemble_only", "--assemble_only=true", "--noassemble_only", "-assemble_only")
    for spelling in spellings:
        argv[2] = spelling
        got = cli.command_line(drop=("assemble_only", "max_cells"), argv=argv)
        assert got == "python launch/sweep.py --config=c.py '--workdir=w x'"
    # A flag whose name only starts with a dropped one stays.
    argv[2] = "--assemble_only_extra=1"
    assert "--assemble_only_extra=1" in cli.command_line(drop=("assemble_only",), argv=argv)
