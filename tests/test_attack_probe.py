"""The gradient-masking probe: sound against exact distances, float32 copies, the launcher.

Oracle: a linear classifier's exact minimal L-inf distances (conftest.exact_linear_model): no
attack can break an example farther than eps, and a good attack breaks every one closer.
"""

import json

import keras
import numpy as np
import pytest
from conftest import exact_linear_model

from tempscale_tf import export, tables
from tempscale_tf.analysis import attack_probe


@pytest.fixture(scope="module")
def linear():
    return exact_linear_model(n=120, weight_std=0.2, bias_std=0.1)


def test_probe_is_sound_and_tight_on_a_linear_model(linear):
    model, x, y, d = linear["model"], linear["x"], linear["y"], linear["linf"]
    eps = float(np.median(d))
    truth = float(np.mean(d > eps))
    rows = attack_probe.probe(model, x, y, eps, seed=1)
    assert [r["attack"] for r in rows] == [s.name for s in attack_probe.default_settings(eps)]
    assert {r["precision"] for r in rows} == {"float32"}  # no copy of a float32 model
    for r in rows:
        assert r["clean"] == 1.0  # y is the model's prediction
        # Sound: an example farther than eps can never be broken.
        assert r["robust"] >= truth - 1e-9, r
    # Tight: the strongest setting breaks (almost) every example closer than eps.
    assert min(r["robust"] for r in rows) <= truth + 0.03
    lines = attack_probe.summary(rows)
    assert len(lines) == 1 and lines[0].startswith("float32: robust accuracy from")


def test_float32_copy_of_a_bfloat16_model():
    keras.utils.set_random_seed(3)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(5),
            ]
        )
    finally:
        keras.config.set_dtype_policy(policy)
    copy = attack_probe.float32_copy(model)
    assert model.layers[0].compute_dtype == "bfloat16"
    assert all(layer.compute_dtype == "float32" for layer in copy.layers)
    for a, b in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)).astype("float32")
    # bfloat16 keeps 8 bits of mantissa: the logits agree to about 1%.
    np.testing.assert_allclose(
        np.asarray(model(x), np.float32), np.asarray(copy(x)), rtol=0.05, atol=0.05
    )
    y = np.argmax(np.asarray(copy(x)), -1)
    settings = [attack_probe.ProbeSetting("pgd5", "pgd", {"steps": 5, "step_size": 0.01})]
    rows = attack_probe.probe(model, x, y, 0.03, settings)
    assert [r["precision"] for r in rows] == ["bfloat16", "float32"]
    assert rows[1]["clean"] == 1.0
    assert all(0 <= r["robust"] <= r["clean"] for r in rows)
    rows = attack_probe.probe(model, x, y, 0.03, settings, with_float32=False)
    assert [r["precision"] for r in rows] == ["bfloat16"]


def test_compute_dtype_looks_at_the_layers(tmp_path):
    # A functional model keeps a float32 policy of its own while its layers compute in bfloat16
    # (as the models the training loop saves do once loaded from their .keras file).
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, dtype="mixed_bfloat16")(inputs)
    outputs = keras.layers.Dense(2, dtype="float32")(hidden)
    model = keras.Model(inputs, outputs)
    assert model.dtype_policy.compute_dtype == "float32"
    assert attack_probe.compute_dtype(model) == "bfloat16"
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert attack_probe.compute_dtype(loaded) == "bfloat16"
    copy = attack_probe.float32_copy(loaded)
    assert attack_probe.compute_dtype(copy) == "float32"


def test_summary_reports_the_spread():
    rows = [
        {"precision": "bfloat16", "attack": "pgd", "robust": 0.33},
        {"precision": "bfloat16", "attack": "apgd", "robust": 0.13},
        {"precision": "float32", "attack": "pgd", "robust": 0.30},
    ]
    lines = attack_probe.summary(rows)
    assert lines[0] == (
        "bfloat16: robust accuracy from 0.130 (apgd) to 0.330 (pgd), a spread of 0.200"
    )
    assert lines[1].endswith("a spread of 0.000")


def test_probe_rejects_bad_settings(linear):
    model, x, y = linear["model"], linear["x"][:4], linear["y"][:4]
    with pytest.raises(ValueError, match="eps"):
        attack_probe.probe(model, x, y, 0.0)
    with pytest.raises(ValueError, match="eps"):
        attack_probe.probe(model, x, y, float("nan"))
    with pytest.raises(ValueError, match="unknown probe attack kind 'fgsm'"):
        attack_probe.probe(model, x, y, 0.1, [attack_probe.ProbeSetting("f", "fgsm", {})])
    with pytest.raises(ValueError, match="steps"):
        attack_probe.default_settings(0.1, steps=0)
    with pytest.raises(ValueError, match="at least one"):
        attack_probe.probe(model, x, y, 0.1, [])


def test_load_keras_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        export.load_keras_model(tmp_path / "none.keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="temperature"):
        export.load_keras_model(str(tmp_path / "model.keras"))
    loaded, info = export.load_keras_model(str(tmp_path / "model.keras"), temperature=2.0)
    assert info["temperature"] == 2.0 and loaded.output_shape == (None, 2)
    with pytest.raises(ValueError, match="temperature"):
        export.load_keras_model(str(tmp_path / "model.keras"), temperature=-1.0)


def test_attack_probe_launcher(tmp_path, run_script):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 4, strides=4, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.save(tmp_path / "model.keras")
    (tmp_path / export.INFO_FILE).write_text(json.dumps({"temperature": 5.0}))
    out = tmp_path / "probe"
    result = run_script(
        "attack_probe",
        f"--keras_model={tmp_path / 'model.keras'}",
        "--dataset=digits",
        "--num_examples=24",
        "--steps=2",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    frame = tables.read_table(str(out) + ".csv")
    assert len(frame) == len(attack_probe.default_settings(8 / 255, 2))
    assert (frame["robust"] <= frame["clean"]).all()
    text = (tmp_path / "probe.md").read_text()
    assert "attack_probe.py" in text and "training temperature=5.0" in text
    missing = run_script(
        "attack_probe", f"--keras_model={tmp_path / 'x.keras'}", "--dataset=digits", f"--out={out}"
    )
    assert missing.returncode != 0 and "not found" in missing.stderr
