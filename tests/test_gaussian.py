"""The Gaussian-cluster experiment recovers the Bayes temperature T = 2 sigma^2."""

import numpy as np
import pytest
from conftest import run_launcher

from tempscale_tf import gaussian


def test_bayes_posterior_is_a_softmax_at_t_equal_two_sigma_squared():
    means = gaussian.two_cluster_means(dim=3, separation=2.0)
    sigma = 0.8
    x, y = gaussian.make_gaussian_clusters(1000, means, sigma, seed=0)
    assert x.shape == (1000, 3) and x.dtype == np.float32 and np.bincount(y).tolist() == [500] * 2
    # Bayes' rule with equal priors: p(k|x) = N(x; mu_k) / sum_j N(x; mu_j).
    density = np.exp(-np.sum((x[:, None] - means[None]) ** 2, -1) / (2 * sigma**2))
    posterior = density / density.sum(1, keepdims=True)
    logits = gaussian.bayes_logits(x, means, sigma)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax, posterior, rtol=1e-10)
    assert gaussian.bayes_temperature(sigma) == pytest.approx(2 * sigma**2)
    # The model computes -||x - c_k||^2 / T.
    model = gaussian.build_gaussian_model(2, 3, initial_temperature=2 * sigma**2, centres=means)
    np.testing.assert_allclose(model(x[:10]).numpy(), logits[:10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.7, 1.5])
@pytest.mark.parametrize("centres", ["class_means", "learned"])
def test_fit_recovers_the_bayes_temperature(sigma, centres):
    means = gaussian.two_cluster_means(dim=2, separation=2.0)
    x, y = gaussian.make_gaussian_clusters(10_000, means, sigma, seed=1)
    fit = gaussian.fit_gaussian_model(x, y, 2, centres=centres, anchor_weight=1.0, steps=400)
    t_true = 2 * sigma**2
    assert fit["temperature"] == pytest.approx(t_true, rel=0.1)
    np.testing.assert_allclose(fit["centres"], means, atol=0.1)


def test_ce_alone_does_not_identify_t_but_its_rescaled_value():
    means = gaussian.two_cluster_means(dim=2, separation=2.0)
    sigma = 1.0
    x, y = gaussian.make_gaussian_clusters(10_000, means, sigma, seed=2)
    fits = [
        gaussian.fit_gaussian_model(
            x, y, 2, centres="learned", anchor_weight=0.0, initial_temperature=t0, steps=400
        )
        for t0 in (0.5, 8.0)
    ]
    raw = [f["temperature"] for f in fits]
    # Different starting points end at different T (and centre scales) with the same posterior...
    assert max(raw) / min(raw) > 1.5
    assert fits[0]["train_nll"] == pytest.approx(fits[1]["train_nll"], abs=1e-3)
    # ... and T rescaled to the class means' spread is 2 sigma^2 for both.
    for f in fits:
        assert f["rescaled_temperature"] == pytest.approx(2 * sigma**2, rel=0.1)


def test_bad_arguments():
    x, y = gaussian.make_gaussian_clusters(10, gaussian.two_cluster_means(), 1.0)
    with pytest.raises(ValueError, match="centres"):
        gaussian.fit_gaussian_model(x, y, centres="random")
    with pytest.raises(ValueError, match="sigma"):
        gaussian.make_gaussian_clusters(10, gaussian.two_cluster_means(), 0.0)
    with pytest.raises(ValueError, match="means"):
        gaussian.make_gaussian_clusters(10, np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="labels"):
        gaussian.fit_gaussian_model(x, y + 5, 2)


def test_gaussian_launcher_writes_the_table(tmp_path):
    result = run_launcher(
        "gaussian_clusters",
        "--sigmas=1",
        "--num_train=2000",
        "--num_test=2000",
        "--steps=50",
        f"--table={tmp_path / 'g'}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from tempscale_tf.tables import read_table

    frame = read_table(tmp_path / "g.csv")
    assert list(frame["variant"]) == ["class_means", "learned+anchor", "learned, CE only"]
    assert (frame["T_bayes"] == 2.0).all()
    assert "T_rescaled" in (tmp_path / "g.md").read_text()
