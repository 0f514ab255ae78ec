"""`launch/bench.py --quick` runs every benchmark and writes a well-formed table (no timings)."""

import math
import os
import pathlib
import subprocess
import sys

from tempscale_tf import tables

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_bench_quick_writes_table(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "launch/bench.py", "--quick", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    frame = tables.read_table(out.with_suffix(".csv"))
    assert {"benchmark", "variant", "value", "unit"} <= set(frame.columns)
    assert {
        "train_step",
        "flops",
        "input_pipeline",
        "pgd20",
        "robust_eval",
        "cw_l2",
        "corruption",
        "autoattack",
    } <= set(frame["benchmark"])
    aa = frame[frame.benchmark == "autoattack"]
    assert sorted(aa["model"].unique()) == ["linear", "small_cnn"]
    aa = aa.set_index("variant")
    # ART is a test extra, so its rows are there.
    assert {"ours_first_call", "ours", "art", "speedup_ours_vs_art"} <= set(aa.index)
    assert aa.loc[["ours", "art"], "robust_accuracy"].between(0, 1).all()
    assert all(math.isfinite(v) and v > 0 for v in frame["value"])
    assert set(frame[frame.benchmark == "train_step"]["variant"]) == {
        "ours_jit=False",
        "ours_jit=True",
        "keras_fit_stock_loss",
    }
    text = out.with_suffix(".md").read_text()
    assert "--quick" in text and "CPU cores" in text and "cleverhans" in text and "vs ART" in text
