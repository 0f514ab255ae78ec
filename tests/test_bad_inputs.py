"""Bad input to the entry scripts, as a new user would type it: each must exit non-zero with one
clear `error: ...` line that names the problem, and no Python traceback.

The probes run as subprocesses (the way a user meets them), two at a time.
"""

import concurrent.futures
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher

from tempscale_tf import training

SMOKE = "--config=configs/digits_small.py:smoke"


def _npz(path, x_train, y_train, x_test=None, y_test=None):
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_train if x_test is None else x_test,
        y_test=y_train if y_test is None else y_test,
    )
    return f"npz:{path}"


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    """Bad data files, a finished digits run and a copy of it with a corrupted checkpoint."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 10, size=64)
    files = {
        "nan_pixels": _npz(root / "nan.npz", np.full((64, 32, 32, 3), np.nan, np.float32), y),
        "labels_out_of_range": _npz(root / "labels.npz", x, np.where(y == 3, -1, y)),
        "wrong_rank": _npz(root / "rank.npz", x.reshape(64, -1), y),
    }
    truncated = root / "truncated"
    truncated.mkdir()
    archive = truncated / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = root / "data_batch_1"
        member.write_bytes(b"\x80\x04" + b"x" * 5000)
        tar.add(member, arcname="cifar-10-batches-py/data_batch_1")
    archive.write_bytes(archive.read_bytes()[:200])
    files["truncated_dir"] = str(truncated)
    files["empty_dir"] = str(root / "empty")
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    files["a_file"] = str(root / "a_file")

    config = training.default_config()
    config.model_kwargs.width = 4
    config.train_subset, config.test_subset, config.epochs = 128, 64, 1
    config.batch_size, config.export = 64, False
    run = root / "run"
    training.train(config, run, strategy=tf.distribute.get_strategy(), progress=False)
    files["run"] = str(run)
    broken = root / "broken_run"
    import shutil

    shutil.copytree(run, broken)
    latest = pathlib.Path(tf.train.latest_checkpoint(str(broken / "checkpoints")))
    data_file = pathlib.Path(str(latest) + ".data-00000-of-00001")
    data_file.write_bytes(data_file.read_bytes()[:64])
    files["broken_run"] = str(broken)
    return files


# (probe id, script, flags (formatted with the probe files), words the error line must contain)
PROBES = [
    ("temperature_zero", "train", [SMOKE, "--temperature=0"], ["temperature", "0"]),
    ("temperature_nan", "train", [SMOKE, "--temperature=nan"], ["temperature", "nan"]),
    ("unknown_model", "train", [SMOKE, "--model=resnet9000"], ["model", "resnet9000"]),
    ("unknown_dataset", "train", [SMOKE, "--dataset=mnist2"], ["dataset", "mnist2"]),
    ("unknown_schedule", "train", [SMOKE, "--schedule=sawtooth"], ["schedule", "sawtooth"]),
    ("zero_epochs", "train", [SMOKE, "--epochs=0"], ["epochs"]),
    ("negative_lr", "train", [SMOKE, "--lr=-0.1"], ["lr"]),
    (
        "missing_data",
        "train",
        [SMOKE, "--dataset=cifar10", "--data_dir={empty_dir}"],
        ["cifar10", "not found", "cifar-10-python.tar.gz"],
    ),
    (
        "truncated_data",
        "train",
        [SMOKE, "--dataset=cifar10", "--data_dir={truncated_dir}"],
        ["cifar-10-python.tar.gz", "not a readable"],
    ),
    ("nan_pixels", "train", [SMOKE, "--dataset={nan_pixels}"], ["NaN"]),
    (
        "labels_out_of_range",
        "train",
        [SMOKE, "--dataset={labels_out_of_range}"],
        ["labels", "[-1, 9]"],
    ),
    ("wrong_image_rank", "train", [SMOKE, "--dataset={wrong_rank}"], ["[N, H, W, C]"]),
    ("workdir_is_file", "train", [SMOKE, "--workdir={a_file}"], ["is a file"]),
    ("missing_config", "train", ["--config=configs/nope.py"], ["configs/nope.py"]),
    ("adv_negative_eps", "train", [SMOKE, "--adv_train", "--adv_eps=-0.1"], ["adv_eps"]),
    ("adv_zero_steps", "train", [SMOKE, "--adv_train", "--adv_steps=0"], ["adv_steps"]),
    ("corrupted_checkpoint", "evaluate", ["--workdir={broken_run}"], ["checkpoint", "ckpt-"]),
    ("eval_negative_eps", "evaluate", ["--workdir={run}", "--eps=-0.1"], ["eps", "-0.1"]),
    ("eval_zero_steps", "evaluate", ["--workdir={run}", "--steps=0"], ["steps"]),
    ("eval_missing_run", "evaluate", ["--workdir={empty_dir}"], ["config.json"]),
    (
        "eval_two_sources",
        "evaluate",
        ["--workdir={run}", "--keras_model={a_file}"],
        ["exactly one", "--workdir", "--keras_model"],
    ),
    ("eval_missing_config", "evaluate", ["--workdir={run}", "--eval_config=nope.py"], ["nope.py"]),
    ("eval_bad_corruption", "evaluate", ["--workdir={run}", "--corruptions=smog"], ["smog"]),
]


def _flags(script, flags, files, tmp):
    flags = [f.format(**files) for f in flags]
    if script == "train" and not any(f.startswith("--workdir") for f in flags):
        flags.append(f"--workdir={tmp}")
    return flags + ["--progress=false"]


def test_bad_inputs_give_one_clear_line(probe_files, tmp_path):
    """Each probe: exit code 2, an `error:` line with the expected words, no traceback."""
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for name, script, flags, _ in PROBES:
            args = _flags(script, flags, probe_files, tmp_path / name)
            jobs[name] = pool.submit(run_launcher, script, *args, timeout=300)
    failures = []
    for name, _, _, words in PROBES:
        result = jobs[name].result()
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        problems = []
        if result.returncode != 2:
            problems.append(f"exit code {result.returncode}")
        if "Traceback" in result.stderr or "Traceback" in result.stdout:
            problems.append("traceback")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines")
        elif not all(w.lower() in errors[0].lower() for w in words):
            problems.append(f"error line lacks {words}: {errors[0]!r}")
        if problems:
            failures.append(f"{name}: {', '.join(problems)}\n{result.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    # Nothing was trained or exported by a refused run.
    assert not (tmp_path / "nan_pixels" / "metrics.json").exists()
