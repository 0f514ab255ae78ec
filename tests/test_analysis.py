"""Analysis suite: every metric against a hand-checked case, and launch/analyze.py end to end."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_launcher

from tempscale_tf import tables
from tempscale_tf.analysis import geometry, gradients, history, ood, rank
from tempscale_tf.losses import temperature_cross_entropy

TEMPERATURES = (0.1, 1.0, 10.0, 100.0)


def _with_singular_values(s, rows=12, cols=8, seed=0):
    """A [rows, cols] matrix whose singular values are `s` (random orthogonal factors)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))
    v, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    sigma = np.zeros((rows, cols))
    sigma[np.arange(len(s)), np.arange(len(s))] = s
    return u @ sigma @ v.T


# ----------------------------------------------------------------------------------- rank


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    s = [2.5] * k + [0.0] * (8 - k)
    assert rank.effective_rank_from_singular_values(s) == pytest.approx(k)
    assert rank.effective_rank(_with_singular_values(s), center=False) == pytest.approx(k)


def test_effective_rank_of_a_known_spectrum():
    # s = (3, 2, 1): p = (1/2, 1/3, 1/6), H = ln2/2 + ln3/3 + ln6/6 = 1.01140, exp(H) = 2.74946.
    x = _with_singular_values([3.0, 2.0, 1.0])
    assert rank.effective_rank(x, center=False) == pytest.approx(2.74946, abs=1e-5)
    assert rank.effective_rank(7 * x, center=False) == pytest.approx(2.74946, abs=1e-5)
    assert rank.effective_rank_from_singular_values([0, 0]) == 0.0
    # Centring: rows = mean + x_centred, so the centred rank ignores the mean row.
    centred = x - x.mean(axis=0)
    shifted = centred + np.arange(8.0)[None, :]
    assert rank.effective_rank(shifted) == pytest.approx(rank.effective_rank(centred, False))


@pytest.mark.parametrize("r", [1, 3, 7])
def test_numerical_rank_of_a_rank_r_matrix(r):
    rng = np.random.default_rng(r)
    x = rng.normal(size=(60, r)) @ rng.normal(size=(r, 20))
    assert rank.numerical_rank(x, center=False) == r
    assert rank.numerical_rank(x.astype(np.float32), center=False) == r  # float32 tolerance
    assert rank.numerical_rank(x + 5.0, center=True) == r  # a constant offset is centred away
    assert rank.numerical_rank(x, center=False, rtol=1e-9) == r


def test_numerical_rank_edge_cases():
    assert rank.numerical_rank(np.zeros((5, 3))) == 0
    assert rank.numerical_rank(np.ones((5, 3)), center=False) == 1
    assert rank.numerical_rank(np.ones((5, 3)), center=True) == 0
    # Singular values 1 and 1e-3: a relative tolerance of 1e-2 drops the second.
    x = _with_singular_values([1.0, 1e-3])
    assert rank.numerical_rank(x, center=False) == 2
    assert rank.numerical_rank(x, center=False, rtol=1e-2) == 1
    assert rank.numerical_rank(x, center=False, tol=1e-4) == 2


def test_projected_accuracies_and_smallest_k():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    kernel, bias = rng.normal(size=(6, 4)), rng.normal(size=4)
    labels = np.argmax(feats @ kernel + bias, axis=1)  # the head is 100% accurate
    ks, accs = rank.projected_accuracies(feats, labels, kernel, bias)
    assert list(ks) == list(range(7)) and accs[-1] == 1.0
    constant = np.argmax(feats.mean(axis=0) @ kernel + bias)
    assert accs[0] == pytest.approx(np.mean(labels == constant))
    # k directions = a direct projection on the top-k right singular vectors.
    mean = feats.mean(axis=0)
    vt = np.linalg.svd(feats - mean, full_matrices=False)[2]
    proj = mean + (feats - mean) @ vt[:2].T @ vt[:2]
    assert accs[2] == pytest.approx(np.mean(np.argmax(proj @ kernel + bias, 1) == labels))
    assert rank.smallest_k_within([0, 1, 2, 3], [0.1, 0.5, 0.895, 0.9], 0.9) == 2
    assert rank.smallest_k_within([0, 1, 2, 3], [0.1, 0.5, 0.88, 0.9], 0.9) == 3
    assert rank.smallest_k_within([0, 1], [0.1, 0.2], 0.9) is None


# ----------------------------------------------------------------------------------- geometry


def test_prototype_statistics_of_synthetic_clusters():
    c0, e = np.array([3.0, 4.0]), np.array([1.0, 0.0])
    theta, r = 0.3, 2.0
    feats = np.array(
        [c0 + e, c0 - e, c0 + 3 * e, c0 - 3 * e]  # class 0: distances 1, 1, 3, 3
        + [[r * np.cos(theta), r * np.sin(theta)], [r * np.cos(theta), -r * np.sin(theta)]]
    )
    labels = np.array([0, 0, 0, 0, 1, 1])
    protos = geometry.class_prototypes(feats, labels)
    np.testing.assert_allclose(protos, [c0, [r * np.cos(theta), 0.0]], atol=1e-12)
    stats = geometry.prototype_statistics(feats, labels)
    np.testing.assert_allclose(stats["count"], [4, 2])
    np.testing.assert_allclose(stats["distance_mean"], [2.0, r * np.sin(theta)])
    np.testing.assert_allclose(stats["distance_var"], [1.0, 0.0], atol=1e-12)
    # Class 0: cos(c0 + d e, c0) with c0 = (3, 4): (25 + 3d) / (5 |c0 + d e|).
    cos0 = [(25 + 3 * d) / (5 * np.linalg.norm(c0 + d * e)) for d in (1, -1, 3, -3)]
    np.testing.assert_allclose(stats["cosine_mean"], [np.mean(cos0), np.cos(theta)])
    np.testing.assert_allclose(stats["cosine_var"], [np.var(cos0), 0.0], atol=1e-12)
    summary = geometry.summarize_prototype_statistics(stats)
    assert summary["distance_mean"] == pytest.approx((2.0 + r * np.sin(theta)) / 2)
    assert summary["relative_distance_mean"] == pytest.approx(
        (2.0 / 5.0 + np.sin(theta) / np.cos(theta)) / 2
    )
    # A class without samples: NaN rows, left out of the summary.
    stats3 = geometry.prototype_statistics(feats, labels, num_classes=3)
    assert np.isnan(stats3["distance_mean"][2])
    assert geometry.summarize_prototype_statistics(stats3)["distance_var"] == pytest.approx(0.5)


@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_descent_direction_towards_prototype_for_a_prototype_head(temperature):
    # Linear head whose class weight vectors (rows of W) are the prototypes (1, 0) and (-1, 0).
    protos = np.array([[1.0, 0.0], [-1.0, 0.0]])
    kernel = protos.T  # logits = f @ kernel
    feats = np.array([[0.0, 0.0], [0.0, 1.0], [0.5, -0.5], [1.0, 0.0]])
    labels = np.array([0, 0, 1, 0])
    grads = gradients.feature_gradients(feats @ kernel, labels, kernel, temperature)
    cos = geometry.prototype_direction_cosines(feats, labels, grads, protos)
    # -grad = W^T (y - p) / T is along +x for class 0 (along -x for class 1), so the cosine
    # with (prototype - f) is 1 at the origin, 1/sqrt(2) from (0, 1) and from (0.5, -0.5)
    # towards (-1, 0) it is cos of the angle of (-1.5, 0.5) with (-1, 0); 0 on the prototype.
    expected = [1.0, 1 / np.sqrt(2), 1.5 / np.hypot(1.5, 0.5), 0.0]
    np.testing.assert_allclose(cos, expected, atol=1e-12)


def test_tsne_embedding_and_collapsed_features():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(20, 5)), rng.normal(size=(20, 5)) + 8])
    emb, idx = geometry.tsne_embedding(feats, max_examples=30, seed=0)
    assert emb.shape == (30, 2) and len(idx) == 30 and np.all(np.isfinite(emb))
    with pytest.raises(ValueError, match="collapsed"):
        geometry.tsne_embedding(np.ones((30, 4)))


# ----------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_logit_and_feature_gradients_match_autodiff(temperature):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(16, 6)).astype(np.float32)
    labels = rng.integers(0, 5, size=16)
    head = keras.layers.Dense(5)
    logits = head(feats).numpy()
    z = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = temperature_cross_entropy(labels, z, temperature, reduction="sum")
    expected = tape.gradient(loss, z).numpy()
    analytic = gradients.logit_gradients(logits, labels, temperature)
    np.testing.assert_allclose(analytic, expected, rtol=1e-4, atol=1e-6 / temperature)
    np.testing.assert_allclose(
        gradients.logit_gradient_norms(logits, labels, temperature),
        np.linalg.norm(expected, axis=1),
        rtol=1e-4,
        atol=1e-7,
    )
    kernel = head.kernel.numpy()
    analytic_f = gradients.feature_gradients(logits, labels, kernel, temperature)
    autodiff_f = gradients.feature_gradients_autodiff(head, feats, labels, temperature)
    scale = np.abs(analytic_f).max()
    np.testing.assert_allclose(autodiff_f, analytic_f, atol=1e-5 * scale)


def test_two_level_gradient_norm_closed_form():
    margins = np.array([-5.0, 0.0, 0.5, 2.0])
    for t in TEMPERATURES:
        logits = np.zeros((4, 10))
        logits[:, 3] = margins
        direct = gradients.logit_gradient_norms(logits, np.full(4, 3), t)
        np.testing.assert_allclose(gradients.two_level_gradient_norm(margins, t, 10), direct)
    # Far beyond float64's 1 - p_y: the closed form keeps 1 - p_y = 9 e^{-m/T} / (1 + ...),
    # so ||p - y|| = e^{-m/T} sqrt(81 + 9) at m / T = 300.
    expected = np.exp(-300.0) * np.sqrt(90.0) / 0.1
    assert gradients.two_level_gradient_norm(30.0, 0.1, 10) == pytest.approx(expected, rel=1e-9)
    # Margin 0, K = 10, T = 1: p = 1/10 everywhere, ||p - y|| = sqrt(0.81 + 9 / 100) = sqrt(0.9).
    assert gradients.two_level_gradient_norm(0.0, 1.0, 10) == pytest.approx(np.sqrt(0.9))
    assert gradients.two_level_gradient_norm(0.0, 4.0, 10) == pytest.approx(np.sqrt(0.9) / 4)


def test_hard_sample_share_on_a_constructed_batch():
    assert gradients.gradient_share([1, 1, 1, 5], [False, False, False, True]) == 5 / 8
    assert gradients.gradient_share([1, 1, 1, 5], [True, False, False, True], power=2) == 26 / 28
    # K = 3 classes, logits (m, 0, 0) with label 0: the margin is m.
    margins = np.array([3.0, -2.0, 0.5, 4.0, -1.0, 1.0, 2.0, 5.0])
    logits = np.zeros((8, 3))
    logits[:, 0] = margins
    labels = np.zeros(8, int)
    np.testing.assert_allclose(gradients.logit_margin(logits, labels), margins)
    hard = gradients.hard_mask(margins)  # ceil(0.25 * 8) = 2 lowest margins
    assert np.flatnonzero(hard).tolist() == [1, 4]
    wrong = gradients.hard_mask(margins, "misclassified")
    assert np.flatnonzero(wrong).tolist() == [1, 4]
    for t in (0.3, 1.0, 100.0):
        norms = gradients.two_level_gradient_norm(margins, t, 3)
        expected = norms[[1, 4]].sum() / norms.sum()
        stats = gradients.gradient_statistics(logits, labels, t)
        assert stats["hard_share"] == pytest.approx(expected)
        assert stats["misclassified_share"] == pytest.approx(expected)
        assert stats["misclassified_fraction"] == 0.25
    sweep = gradients.temperature_sweep(logits, labels, [0.05, 1.0, 100.0])
    # Low T: the wrong samples carry nearly all the gradient; high T: about their head count.
    assert sweep["hard_share"][0] > 0.99
    assert sweep["hard_share"][2] == pytest.approx(0.25, abs=0.02)
    with pytest.raises(ValueError, match="rule"):
        gradients.hard_mask(margins, "hardest")


# ----------------------------------------------------------------------------------- OOD


def test_auroc_hand_cases_and_sklearn():
    from sklearn.metrics import roc_auc_score

    assert ood.auroc([5, 6, 7], [1, 2, 3]) == 1.0
    assert ood.auroc([1, 2, 3], [5, 6, 7]) == 0.0
    assert ood.auroc([1, 2, 3, 3], [1, 2, 3, 3]) == 0.5
    assert ood.auroc([2.0], [2.0]) == 0.5
    # in = {1, 3}, out = {2}: pairs (1 < 2), (3 > 2) -> 1/2; with a tie: in {2, 3}, out {2} -> 3/4.
    assert ood.auroc([1, 3], [2]) == 0.5
    assert ood.auroc([2, 3], [2]) == 0.75
    rng = np.random.default_rng(0)
    for trial in range(5):
        s_in = rng.integers(0, 6, size=50 + trial).astype(float)  # many ties
        s_out = rng.integers(0, 5, size=40).astype(float)
        labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
        assert ood.auroc(s_in, s_out) == pytest.approx(
            roc_auc_score(labels, np.r_[s_in, s_out]), abs=1e-12
        )
    from scipy.stats import rankdata

    x = rng.integers(0, 4, size=30)
    np.testing.assert_allclose(ood.midranks(x), rankdata(x))
    with pytest.raises(ValueError, match="empty"):
        ood.auroc([], [1.0])


def test_fpr_at_95_tpr_hand_case():
    s_in = np.arange(1.0, 21.0)  # 20 scores: 95% TPR keeps the top 19, threshold 2
    assert ood.fpr_at_tpr(s_in, [0.0, 1.5, 2.0, 3.0]) == 0.5
    assert ood.fpr_at_tpr(s_in, [0.0, 0.5]) == 0.0
    assert ood.fpr_at_tpr(s_in, [25.0, 30.0]) == 1.0
    assert ood.fpr_at_tpr(s_in, [0.0, 1.5, 2.0, 3.0], tpr=0.5) == 0.0  # threshold 11


def test_ood_scores_sign_convention():
    logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])
    np.testing.assert_allclose(ood.msp_score(logits, 1.0), [0.75, 0.5])
    np.testing.assert_allclose(ood.energy_score(logits, 1.0), [np.log(4.0), np.log(2.0)])
    np.testing.assert_allclose(ood.energy_score(logits, 2.0), 2 * np.log(1 + np.sqrt([3, 1])))
    np.testing.assert_allclose(ood.max_logit_score(logits), [np.log(3.0), 0.0])
    # Confident in-distribution logits vs flat OOD logits: every score ranks them perfectly.
    rng = np.random.default_rng(0)
    confident = np.eye(10)[rng.integers(0, 10, 50)] * 8 + rng.normal(size=(50, 10)) * 0.1
    flat = rng.normal(size=(40, 10)) * 0.1
    for t in (1.0, 10.0):
        metrics = ood.ood_metrics(confident, flat, t)
        assert set(metrics) == set(ood.SCORES)
        for m in metrics.values():
            assert m["auroc"] == 1.0 and m["fpr95"] == 0.0


def test_ood_sets(tmp_path):
    images = np.random.default_rng(0).uniform(size=(6, 32, 32, 3)).astype(np.float32)
    sets, skipped = ood.ood_sets(
        ["uniform_noise", "inverted", "blurred", "cifar100", "svhn"], images, data_dir=tmp_path
    )
    assert set(sets) == {"uniform_noise", "inverted", "blurred"}
    assert set(skipped) == {"cifar100", "svhn"} and "not found" in skipped["cifar100"]
    for x in sets.values():
        assert x.shape == images.shape and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(sets["inverted"], 1 - images)
    assert sets["blurred"].std() < images.std()
    with pytest.raises(ValueError, match="unknown OOD set"):
        ood.ood_sets(["mnist"], images)


# ----------------------------------------------------------------------------------- history


def test_convergence_curves_from_histories(tmp_path):
    def fake_run(name, temperature, seed, accuracies):
        run = tmp_path / name
        run.mkdir()
        config = {"dataset": "digits", "model": "small_cnn", "temperature": temperature}
        config.update(lr=0.1, seed=seed, scale_lr_with_temperature=False)
        (run / "config.json").write_text(json.dumps(config))
        rows = [{"epoch": i, "test/accuracy": a} for i, a in enumerate(accuracies)]
        (run / "history.json").write_text(json.dumps(rows))
        return run

    runs = [
        fake_run("a", 1.0, 0, [0.5, 0.8, 0.9]),
        fake_run("b", 1.0, 1, [0.3, 0.6]),  # shorter: the group is cut to 2 epochs
        fake_run("c", 10.0, 0, [0.1, 0.2, 0.4]),
    ]
    curves = history.convergence_curves(runs)
    key1 = history.RunKey("digits", "small_cnn", 1.0, 0.1, False)
    assert list(curves) == [key1, history.RunKey("digits", "small_cnn", 10.0, 0.1, False)]
    np.testing.assert_allclose(curves[key1]["epoch"], [1, 2])
    np.testing.assert_allclose(curves[key1]["mean"], [0.6, 0.3])
    np.testing.assert_allclose(curves[key1]["std"], [0.1, 0.1])
    assert curves[key1]["runs"] == 2 and curves[key1]["seeds"] == [0, 1]
    assert key1.label == "T=1, lr 0.1"


# ----------------------------------------------------------------------------------- script


def _check_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 8_000, (path, len(data))
    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200, (path, pixels.shape)
    assert pixels[..., :3].var() > 1e-3, path  # not a flat colour


def test_analyze_script_end_to_end(tmp_path):
    import configs.digits_small as digits_small
    from tempscale_tf import training
    from tempscale_tf.analysis import plots

    for temperature in (1.0, 20.0):
        config = digits_small.get_config("smoke")
        config.temperature = temperature
        config.train_subset, config.test_subset = 256, 64
        config.export, config.histogram_examples = False, 0
        training.train(
            config, tmp_path / "runs" / f"t{temperature:g}", tf.distribute.get_strategy(), False
        )
    out = tmp_path / "figures"
    result = run_launcher(
        "analyze",
        f"--workdirs={tmp_path / 'runs' / '*'},{tmp_path / 'missing'}",
        f"--outdir={out}",
        f"--table={tmp_path / 'table'}",
        "--subsample=96",
        "--pgd_steps=2",
        "--tsne_examples=60",
        "--sweep_temperatures=0.1,1,10",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in plots.FIGURES:
        _check_png(out / f"{name}.png")
    frame = tables.read_table(tmp_path / "table.csv")
    assert sorted(frame["temperature"]) == [1.0, 20.0]
    assert (frame["examples"] == 96).all() and (frame["epochs_trained"] == 2).all()
    assert frame["accuracy"].between(0, 1).all() and frame["pgd_accuracy"].between(0, 1).all()
    assert (frame["grad_autodiff_rel_err"] < 1e-4).all()
    assert frame["hard_share"].between(0, 1).all()
    assert (frame["erank_features"] <= frame["feature_dim"]).all()
    ood_frame = tables.read_table(tmp_path / "table_ood.csv")
    assert sorted(set(ood_frame["ood_set"])) == ["blurred", "inverted", "uniform_noise"]
    assert len(ood_frame) == 6 and ood_frame["msp_auroc"].between(0, 1).all()
    md = (tmp_path / "table.md").read_text()
    assert "launch/analyze.py" in md and "T divides the logits" in md
    assert not math.isnan(frame["proto_cos_mean"].iloc[0])

    # One figure at a time (the README's per-figure commands), and a clear error for a typo.
    one = tmp_path / "one"
    base = [f"--workdirs={tmp_path / 'runs' / 't1'}", f"--outdir={one}", "--subsample=32"]
    base += ["--pgd_steps=1"]
    result = run_launcher("analyze", *base, "--figures=rank", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in one.glob("*.png")) == ["rank.png"]
    _check_png(one / "rank.png")
    result = run_launcher("analyze", *base, "--figures=rank,tsnee")
    assert result.returncode != 0 and "Unknown --figures ['tsnee']" in result.stderr
