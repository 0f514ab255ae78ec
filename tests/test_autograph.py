"""Compiled library code must not read its own source files when it is traced.

AutoGraph converts a function by reading its source from disk at the first trace, which can be
hours into a run; after an edit of the file, it reads whatever now stands at the function's old
line numbers. A running training job once traced its evaluation step with the training step's
body this way and trained on the test set. The library's compiled functions therefore trace with
`autograph=False`; these tests record every source lookup of `tempscale_tf` code while training
(with lookahead and adversarial training), evaluating and attacking.
"""

import inspect
import pathlib

import numpy as np
import pytest

import tempscale_tf
from tempscale_tf import attacks, evaluation, training

PACKAGE = pathlib.Path(tempscale_tf.__file__).resolve().parent


@pytest.fixture
def source_reads(monkeypatch):
    """The `tempscale_tf` files whose source `inspect.findsource` is asked for."""
    reads = []
    original = inspect.findsource

    def recording(obj):
        try:
            path = pathlib.Path(inspect.getsourcefile(obj) or "").resolve()
        except TypeError:
            path = pathlib.Path()
        if PACKAGE in path.parents:
            reads.append(f"{path.relative_to(PACKAGE)}:{getattr(obj, '__name__', obj)}")
        return original(obj)

    monkeypatch.setattr(inspect, "findsource", recording)
    return reads


def test_training_and_evaluation_never_read_library_source(tmp_path, source_reads):
    from configs import cifar10_fast

    config = cifar10_fast.get_config("smoke")  # lookahead from epoch 1, lr multipliers, bf16
    config.epochs, config.train_subset, config.export = 2, 256, False
    config.adv_train, config.adv_steps = True, 2  # the in-step PGD loop
    metrics = training.train(config, tmp_path / "run", progress=False)
    # The step count is exact: the evaluation step did not run training updates.
    assert metrics["steps"] == 2 * (256 // config.batch_size)
    model, _ = training.load_run(tmp_path / "run")
    ev = evaluation.default_eval_config()
    ev.num_examples, ev.steps, ev.corruptions, ev.cw_l2_examples = 16, 2, (), 2
    ev.cw_l2_binary_search_steps, ev.cw_l2_max_iterations = 1, 3
    ev.autoattack_steps, ev.autoattack_queries = 3, 10
    row = evaluation.evaluate_model(model, 1.0, "digits", ev, progress=False)
    assert 0 <= row["worst_case"] <= row["clean"]
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    attacks.pgd(model, x, np.arange(4), eps=0.03, step_size=0.01, steps=2, early_stop=1)
    assert source_reads == []
