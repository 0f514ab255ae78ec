"""The clean vs worst-case trade-off verdict (Table III v2) against hand-computed cases, the
launcher end to end, and the Table III v2 smoke sweep on digits."""

import math

import pandas as pd
import pytest

from tempscale_tf import tables
from tempscale_tf.analysis import tradeoff


def _runs():
    # T = 1 control: three settings; w1 has two seeds (spread 0.02).
    rows = [
        (1.0, 0, "", 0.80, 0.40),
        (1.0, 1, "", 0.82, 0.42),  # the default setting's mean: (0.81, 0.41)
        (1.0, 0, "w3", 0.70, 0.50),
        (1.0, 0, "madry", 0.60, 0.55),
        (70.0, 0, "", 0.65, 0.60),  # curve at 0.65: 0.525 -> excess 0.075 > 0.02: real
        (70.0, 1, "", 0.65, 0.60),
        (50.0, 0, "", 0.75, 0.46),  # curve at 0.75: 0.5 + (0.41 - 0.5) * 0.05 / 0.11
        (0.5, 0, "", 0.95, 0.10),  # outside the curve's clean range
        (30.0, 0, "", 0.72, 0.40),  # curve at 0.72: 0.5 - 0.09 * 2 / 11 = 0.4836: loss
    ]
    return pd.DataFrame(rows, columns=["temperature", "seed", "variant", "clean", "worst_case"])


def test_reference_curve_averages_seeds_and_sorts_by_clean():
    x, y = tradeoff.reference_curve(_runs())
    assert x.tolist() == pytest.approx([0.60, 0.70, 0.81])
    assert y.tolist() == pytest.approx([0.55, 0.50, 0.41])


def test_seed_spread_is_the_largest_range_over_seeds():
    assert tradeoff.seed_spread(_runs()) == pytest.approx(0.02)
    single = _runs().drop_duplicates(["temperature", "variant"])
    assert math.isnan(tradeoff.seed_spread(single))


def test_verdicts_against_hand_computed_values():
    by_t = {v.temperature: v for v in tradeoff.verdicts(_runs())}
    assert set(by_t) == {0.5, 30.0, 50.0, 70.0}
    assert by_t[70.0].curve == pytest.approx(0.525)
    assert by_t[70.0].excess == pytest.approx(0.075)
    assert by_t[70.0].verdict == "real gain"
    assert by_t[50.0].curve == pytest.approx(0.5 - 0.09 * 0.05 / 0.11)
    assert by_t[50.0].verdict == "within noise"  # excess 0.0009
    assert by_t[30.0].curve == pytest.approx(0.5 - 0.09 * 0.02 / 0.11)
    assert by_t[30.0].verdict == "loss"
    assert math.isnan(by_t[0.5].curve) and by_t[0.5].verdict.startswith("not comparable")


def test_dominated_settings_leave_the_curve_and_runs_below_it_can_lose():
    runs = _runs()
    extra = [
        (1.0, 0, "eps12", 0.55, 0.52),  # madry (0.60, 0.55) beats it in both: off the frontier
        (100.0, 0, "", 0.50, 0.45),  # below the range, 0.10 under madry's 0.55: dominated
        (20.0, 0, "", 0.50, 0.56),  # below the range, above madry: nothing can be said
    ]
    runs = pd.concat([runs, pd.DataFrame(extra, columns=runs.columns)], ignore_index=True)
    points = tradeoff.reference_points(runs)
    assert points["dominated"].to_dict() == {"eps12": True, "madry": False, "w3": False, "": False}
    x, y = tradeoff.reference_curve(runs)
    assert x.tolist() == pytest.approx([0.60, 0.70, 0.81])  # eps12 left out
    by_t = {v.temperature: v for v in tradeoff.verdicts(runs)}
    assert by_t[100.0].curve == pytest.approx(0.55) and by_t[100.0].excess == pytest.approx(-0.10)
    assert by_t[100.0].verdict == "loss (dominated by a T=1 setting)"
    assert by_t[20.0].verdict == "not comparable (clean accuracy below the T=1 curve)"
    assert by_t[70.0].verdict == "real gain"  # unchanged: inside the frontier's range
    # A tie in both columns dominates neither; equal clean with more robustness does.
    ties = pd.DataFrame(
        [(1.0, 0, "a", 0.7, 0.5), (1.0, 0, "b", 0.7, 0.5), (1.0, 0, "c", 0.7, 0.4)],
        columns=["temperature", "seed", "variant", "clean", "worst_case"],
    )
    assert tradeoff.reference_points(ties)["dominated"].to_dict() == {
        "a": False,
        "b": False,
        "c": True,
    }


def test_sampling_floor_keeps_agreeing_seeds_from_making_a_few_images_a_finding():
    # Table III v2's case: two T=70 seeds with the same worst case (spread 0), 0.008 under the
    # curve. With 1,000 attacked images the floor is 2 sqrt(0.355 * 0.645 / 1000) = 0.0303.
    rows = [
        (1.0, 0, "madry", 0.7265, 0.359),
        (1.0, 0, "madry_eps12", 0.639, 0.383),
        (1.0, 0, "", 0.832, 0.105),
        (70.0, 0, "", 0.7145, 0.355),
        (70.0, 1, "", 0.7086, 0.355),
    ]
    runs = pd.DataFrame(rows, columns=["temperature", "seed", "variant", "clean", "worst_case"])
    (alone,) = tradeoff.verdicts(runs)  # no example counts: the spread (0) alone decides
    assert alone.spread == 0.0 and alone.sampling_se == 0.0 and alone.verdict == "loss"
    runs["eval/num_examples"] = 1000
    (v,) = tradeoff.verdicts(runs)
    curve = 0.383 + (0.359 - 0.383) * (0.71155 - 0.639) / (0.7265 - 0.639)
    assert v.curve == pytest.approx(curve) and v.excess == pytest.approx(0.355 - curve)
    assert v.sampling_se == pytest.approx(math.sqrt(0.355 * 0.645 / 1000))
    assert v.threshold == pytest.approx(2 * v.sampling_se) and v.verdict == "within noise"
    # The floor never lowers a larger seed spread, and a big enough gap is still a finding.
    runs.loc[runs["seed"] == 1, "worst_case"] = 0.255  # spread 0.1, mean 0.305
    (wide,) = tradeoff.verdicts(runs)
    assert wide.threshold == pytest.approx(0.1) and wide.verdict == "within noise"
    runs.loc[runs["temperature"] == 70.0, "worst_case"] = 0.30  # spread 0, 0.06 under
    (low,) = tradeoff.verdicts(runs)
    assert low.threshold == pytest.approx(2 * math.sqrt(0.3 * 0.7 / 1000)) and low.verdict == "loss"
    with pytest.raises(ValueError, match="num_examples"):
        tradeoff.sampling_error(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tradeoff.sampling_error(1.5, 1000)


def test_verdicts_refuse_missing_columns_and_reference():
    with pytest.raises(ValueError, match="worst_case"):
        tradeoff.verdicts(_runs().drop(columns="worst_case"))
    with pytest.raises(ValueError, match="T=2"):
        tradeoff.verdicts(_runs(), temperature=2.0)


def test_tradeoff_launcher(tmp_path, run_script):
    _runs().to_csv(tmp_path / "runs.csv", index=False)
    result = run_script(
        "tradeoff",
        f"--runs={tmp_path / 'runs.csv'}",
        f"--out={tmp_path / 'verdict'}",
        f"--figure={tmp_path / 'fig.png'}",
    )
    assert result.returncode == 0, result.stderr
    table = tables.read_table(tmp_path / "verdict.csv").set_index("temperature")
    assert table.loc[70.0, "verdict"] == "real gain"
    assert table.loc[30.0, "verdict"] == "loss"
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    missing = run_script(
        "tradeoff",
        f"--runs={tmp_path / 'nope.csv'}",
        f"--out={tmp_path / 'v'}",
        f"--figure={tmp_path / 'f.png'}",
    )
    assert missing.returncode == 2 and "nope.csv" in missing.stderr


def test_table3_v2_smoke_sweep(tmp_path, run_script):
    """The Table III v2 config's smoke form: adversarial training of the fast recipe on digits,
    a T=1 cell and one control variant, with the full evaluation ensemble."""
    result = run_script(
        "sweep",
        "--config=configs/sweep_cifar10_fast_at.py:smoke",
        f"--workdir={tmp_path / 'runs'}",
        f"--config.table_dir={tmp_path}",
        "--progress=false",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "table3_v2_digits_fast_cifar_runs.csv")
    assert sorted(runs["variant"].fillna("").tolist()) == ["", "w0.5"]
    assert runs.loc[runs["variant"] == "w0.5", "adv_weight"].tolist() == [0.5]
    for column in ("clean", "pgd20", "worst_case", "autoattack"):
        values = runs[column]
        assert ((values >= 0) & (values <= 1)).all(), column
    # The worst case is robust to every attack, so it is at most each attack's accuracy.
    assert (runs["worst_case"] <= runs[["pgd20", "autoattack"]].min(axis=1) + 1e-9).all()
    md = (tmp_path / "table3_v2_digits_fast_cifar.md").read_text()
    assert "paper objective, weight 1.0, PGD-1" in md
