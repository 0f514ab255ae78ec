"""Model registry: shapes, parameter counts, features, serialization, ViT weight loading."""

import keras
import numpy as np
import pytest

from tempscale_tf.models import MODELS, build_model, feature_extractor
from tempscale_tf.models.vit import load_big_vision_npz, set_attention_temperature


def test_resnet50_cifar_architecture():
    model = build_model("resnet50_cifar", 10, (32, 32, 3))
    assert 23.4e6 < model.count_params() < 23.6e6  # ~23.5M for 10 classes
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)
    assert model.get_layer("features").output.shape[-1] == 2048
    # 3 + 4 + 6 + 3 bottleneck blocks; the spatial size goes 32 -> 16 -> 8 -> 4.
    assert len([layer for layer in model.layers if layer.name.endswith("_conv3")]) == 16
    assert model.get_layer("stage4_block3_out").output.shape[1:3] == (4, 4)


def test_resnet20_parameter_count():
    assert 0.26e6 < build_model("resnet20_cifar", 10).count_params() < 0.28e6


@pytest.mark.parametrize(
    "name,shape",
    [
        ("small_cnn", (32, 32, 3)),
        ("resnet20_cifar", (32, 32, 3)),
        ("vit_tiny", (32, 32, 3)),
        ("small_cnn", (64, 64, 3)),
    ],
)
def test_forward_shapes_and_features(name, shape):
    model = build_model(name, 7, shape, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = np.random.default_rng(0).uniform(size=(2, *shape)).astype("float32")
    logits = model(x)
    assert logits.shape == (2, 7) and logits.dtype == "float32"
    features, logits2 = feature_extractor(model)(x)
    assert features.shape[0] == 2 and features.ndim == 2
    np.testing.assert_allclose(logits, logits2, rtol=1e-5, atol=1e-5)


def test_normalization_is_inside_the_model():
    model = build_model("small_cnn", 3, (8, 8, 3), mean=(0.2, 0.4, 0.6), std=(0.5, 0.5, 0.5))
    x = np.random.default_rng(1).uniform(size=(1, 8, 8, 3)).astype("float32")
    norm = model.get_layer("normalize")(x).numpy()
    np.testing.assert_allclose(norm, (x - np.array([0.2, 0.4, 0.6])) / 0.5, rtol=1e-5, atol=1e-6)


def test_vit_s16_configuration():
    model = build_model("vit_s16", 10, (32, 32, 3))
    backbone = model.get_layer("vit_backbone")
    assert (backbone.num_layers, backbone.num_heads, backbone.hidden_dim, backbone.mlp_dim) == (
        12,
        6,
        384,
        1536,
    )
    assert backbone.image_shape[:2] == (224, 224) and backbone.patch_size == (16, 16)
    assert 21.6e6 < model.count_params() < 21.8e6


def test_resnet50_hub_builds_from_keras_hub():
    model = build_model("resnet50_hub", 5, (64, 64, 3))
    assert model.get_layer("resnet50_backbone").__class__.__name__ == "ResNetBackbone"
    assert model(np.zeros((1, 64, 64, 3), "float32")).shape == (1, 5)


def test_keras_round_trip(tmp_path):
    for name in ("small_cnn", "vit_tiny"):
        model = build_model(name, 4, (16, 16, 3))
        x = np.random.default_rng(2).uniform(size=(2, 16, 16, 3)).astype("float32")
        model.save(tmp_path / f"{name}.keras")
        restored = keras.saving.load_model(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(model(x), restored(x), rtol=1e-5, atol=1e-6)


def test_big_vision_npz_loading(tmp_path):
    """Write a checkpoint in the big_vision layout with known values and load it."""
    model = build_model(
        "vit_tiny",
        3,
        (16, 16, 3),
        patch_size=8,
        num_layers=2,
        hidden_dim=8,
        num_heads=2,
        mlp_dim=16,
    )
    backbone = model.get_layer("vit_backbone")
    rng = np.random.default_rng(3)
    d, h, k = 8, 2, 4
    params = {
        "cls": rng.normal(size=(1, 1, d)),
        "embedding/kernel": rng.normal(size=(8, 8, 3, d)),
        "embedding/bias": rng.normal(size=(d,)),
        "Transformer/posembed_input/pos_embedding": rng.normal(size=(1, 5, d)),
        "Transformer/encoder_norm/scale": rng.normal(size=(d,)),
        "Transformer/encoder_norm/bias": rng.normal(size=(d,)),
        "head/kernel": rng.normal(size=(d, 1000)),
    }
    for i in range(2):
        p = f"Transformer/encoderblock_{i}/"
        for n in ("query", "key", "value"):
            params[f"{p}MultiHeadDotProductAttention_1/{n}/kernel"] = rng.normal(size=(d, h, k))
            params[f"{p}MultiHeadDotProductAttention_1/{n}/bias"] = rng.normal(size=(h, k))
        params[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = rng.normal(size=(h, k, d))
        params[f"{p}MultiHeadDotProductAttention_1/out/bias"] = rng.normal(size=(d,))
        for n in ("LayerNorm_0", "LayerNorm_2"):
            params[f"{p}{n}/scale"] = rng.normal(size=(d,))
            params[f"{p}{n}/bias"] = rng.normal(size=(d,))
        params[f"{p}MlpBlock_3/Dense_0/kernel"] = rng.normal(size=(d, 16))
        params[f"{p}MlpBlock_3/Dense_0/bias"] = rng.normal(size=(16,))
        params[f"{p}MlpBlock_3/Dense_1/kernel"] = rng.normal(size=(16, d))
        params[f"{p}MlpBlock_3/Dense_1/bias"] = rng.normal(size=(d,))
    np.savez(tmp_path / "vit.npz", **params)
    load_big_vision_npz(backbone, str(tmp_path / "vit.npz"))
    by_path = {v.path.split("vit_backbone/")[-1]: v.numpy() for v in backbone.weights}
    np.testing.assert_allclose(
        by_path["vit_patching_and_embedding/class_token"], params["cls"], rtol=1e-6
    )
    np.testing.assert_allclose(
        by_path["vit_encoder/transformer_block_2/mha/attention_output/kernel"],
        params["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        by_path["vit_patching_and_embedding/position_embedding/embeddings"],
        params["Transformer/posembed_input/pos_embedding"][0],
        rtol=1e-6,
    )
    # A checkpoint for another width is refused with a message naming the parameter.
    params["embedding/bias"] = np.zeros(16)
    np.savez(tmp_path / "bad.npz", **params)
    with pytest.raises(ValueError, match="embedding/bias"):
        load_big_vision_npz(backbone, str(tmp_path / "bad.npz"))


def test_attention_temperature_changes_the_scale():
    model = build_model("vit_tiny", 3, (16, 16, 3), attention_temperature=4.0)
    mhas = [
        layer
        for layer in model.get_layer("vit_backbone")._flatten_layers()
        if isinstance(layer, keras.layers.MultiHeadAttention)
    ]
    assert mhas and all(
        np.isclose(m._inverse_sqrt_key_dim, 1 / (4.0 * np.sqrt(m._key_dim))) for m in mhas
    )
    with pytest.raises(ValueError, match="attention_temperature"):
        set_attention_temperature(model.get_layer("vit_backbone"), 0.0)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="Unknown model 'resnet51'"):
        build_model("resnet51", 10)
    with pytest.raises(ValueError, match="image_shape"):
        build_model("small_cnn", 10, (32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", 0)
    with pytest.raises(FileNotFoundError, match="weights"):
        build_model("vit_tiny", 3, (16, 16, 3), weights_path="/nonexistent/vit.npz")
    assert set(MODELS) >= {"resnet50_cifar", "vit_s16", "resnet50_hub", "small_cnn"}


def test_attention_temperature_survives_saving(tmp_path):
    """get_config, a .keras file and the SavedModel export all keep the attention temperature."""
    import keras
    import tensorflow as tf

    from tempscale_tf.export import export_saved_model, load_saved_model

    model = build_model("vit_tiny", 10, (16, 16, 3), attention_temperature=5.0)
    x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype("float32")
    logits = model(x).numpy()
    plain = build_model("vit_tiny", 10, (16, 16, 3))
    plain.set_weights(model.get_weights())
    assert np.abs(plain(x).numpy() - logits).max() > 1e-2  # the setting matters here
    assert model.get_config()["attention_temperature"] == 5.0
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.attention_temperature == 5.0
    np.testing.assert_allclose(loaded(x).numpy(), logits, rtol=1e-5, atol=1e-5)
    export_saved_model(model, str(tmp_path / "export"), 1.0)
    serve, _ = load_saved_model(tmp_path / "export")
    out = serve(images=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5)
    again = keras.saving.load_model(tmp_path / "export" / "model.keras")
    np.testing.assert_allclose(again(x).numpy(), logits, rtol=1e-5, atol=1e-5)
