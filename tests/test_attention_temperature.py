"""Attention temperature of the ViT models: softmax(q.k / (tau * sqrt(d))) in the first block.

The attention probabilities are read from the first encoder block's
`keras.layers.MultiHeadAttention` (`return_attention_scores=True`) on the block's own
layer-normalised input, computed through the model's layers (normalise -> patch + position
embedding -> ln_1), and are checked against a numpy computation from the layer's query/key
weights, against an untouched keras-hub `ViTBackbone`, and for the entropy's growth with tau.
"""

import math

import keras
import numpy as np
import pytest

from tempscale_tf.models import build_model
from tempscale_tf.models.vit import set_attention_temperature

TAUS = (0.5, 1.0, 4.0)
VIT_TINY = dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def _images(n=8, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype("float32")


def _model(tau):
    keras.utils.set_random_seed(0)  # the same weights at every tau
    return build_model("vit_tiny", 10, (32, 32, 3), attention_temperature=tau)


def _first_block_input(model, images):
    """The layer-normalised tokens that the first block's attention sees."""
    backbone = model.get_layer("vit_backbone")
    x = model.get_layer("normalize")(images)
    tokens = backbone.get_layer("vit_patching_and_embedding")(x)
    block = backbone.get_layer("vit_encoder").encoder_layers[0]
    return block, block.layer_norm_1(tokens)


def _attention(model, images):
    block, h = _first_block_input(model, images)
    _, scores = block.mha(h, h, return_attention_scores=True, training=False)
    return block.mha, h.numpy(), scores.numpy()  # scores: [batch, heads, queries, keys]


def _numpy_attention(mha, h, tau):
    """softmax(q.k / (tau * sqrt(d))) from the layer's query/key kernels and biases."""
    wq, bq = (w.numpy() for w in mha.query_dense.weights)
    wk, bk = (w.numpy() for w in mha.key_dense.weights)
    q = np.einsum("btc,chd->bthd", h, wq) + bq  # [batch, tokens, heads, d]
    k = np.einsum("btc,chd->bthd", h, wk) + bk
    d = q.shape[-1]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / (tau * math.sqrt(d))
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def _entropy(p):
    return float(np.mean(-np.sum(p * np.log(np.clip(p, 1e-30, 1.0)), axis=-1)))


def test_attention_probabilities_and_entropy_rise_with_tau():
    images = _images()
    scores, reference_weights = {}, None
    for tau in TAUS:
        model = _model(tau)
        weights = [w.numpy() for w in model.weights]
        if reference_weights is None:
            reference_weights = weights
        for a, b in zip(reference_weights, weights):
            np.testing.assert_array_equal(a, b)
        mha, h, scores[tau] = _attention(model, images)
        assert scores[tau].shape == (8, 2, 17, 17)  # 16 patches + the class token
        np.testing.assert_allclose(scores[tau].sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(scores[tau], _numpy_attention(mha, h, tau), atol=2e-6)
    # tau divides the attention logits: the tau-scores are the tau=1 scores re-tempered.
    for tau in (0.5, 4.0):
        log_p1 = np.log(scores[1.0]) / tau
        retempered = np.exp(log_p1 - log_p1.max(-1, keepdims=True))
        retempered /= retempered.sum(-1, keepdims=True)
        np.testing.assert_allclose(scores[tau], retempered, atol=2e-6)
    entropy = {tau: _entropy(scores[tau]) for tau in TAUS}
    assert entropy[0.5] + 0.01 < entropy[1.0] < entropy[4.0] - 0.01
    assert entropy[4.0] <= math.log(17) + 1e-6  # at most uniform attention over 17 tokens


def test_tau_one_equals_the_unmodified_keras_hub_layer():
    import keras_hub

    images = _images(seed=1)
    model = _model(1.0)
    ours = model.get_layer("vit_backbone")
    plain = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), **VIT_TINY)
    plain.set_weights(ours.get_weights())
    plain_mha = plain.get_layer("vit_encoder").encoder_layers[0].mha
    assert plain_mha._inverse_sqrt_key_dim == pytest.approx(1 / math.sqrt(16))
    _, h, scores = _attention(model, images)
    _, plain_scores = plain_mha(h, h, return_attention_scores=True, training=False)
    np.testing.assert_allclose(scores, plain_scores.numpy(), rtol=1e-6, atol=1e-7)
    normalized = model.get_layer("normalize")(images)
    np.testing.assert_allclose(
        ours(normalized).numpy(), plain(normalized).numpy(), rtol=1e-5, atol=1e-6
    )
    # A tempered model differs from it, and set_attention_temperature(1) restores it.
    hot = _model(4.0)
    assert not np.allclose(hot(images).numpy(), model(images).numpy(), atol=1e-4)
    set_attention_temperature(hot.get_layer("vit_backbone"), 1.0)
    np.testing.assert_allclose(hot(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_attention_temperature(bad):
    with pytest.raises(ValueError, match="attention_temperature"):
        build_model("vit_tiny", 10, (32, 32, 3), attention_temperature=bad)
