r"""Temperature sweep on the embedded digits data (small CNN), the fast end-to-end check.

  python launch/sweep.py --config=configs/sweep_digits.py --workdir=runs/sweep_digits

`:tiny` (used by the tests) trains 1 epoch on 128 images and evaluates 32 examples.
"""

import ml_collections

from tempscale_tf import paper
from tempscale_tf.evaluation import default_eval_config
from tempscale_tf.training import default_config


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.train = default_config()
    c.train.mixed_precision = False  # the committed tables were made in float32
    c.train.model = "small_cnn"
    c.train.epochs = 30
    c.train.lr = 0.05
    c.train.export = False
    c.train.histogram_examples = 0
    c.eval = default_eval_config()
    c.eval.num_examples = 360
    c.eval.cw_l2_examples = 50
    c.datasets = ["digits"]
    c.temperatures = list(paper.PAPER_TEMPERATURES)
    c.seeds = [0, 1]
    c.table_dir = "tables"
    c.notes = [
        "digits (1437 train / 360 test), small_cnn: a CPU stand-in for the paper's "
        "ResNet50/ViT on CIFAR; same optimiser settings at every temperature."
    ]
    if arg == "tiny":
        c.train.epochs, c.train.train_subset, c.train.batch_size = 1, 128, 64
        c.train.model_kwargs.width = 4
        c.eval.num_examples, c.eval.batch_size = 32, 32
        c.eval.corruptions, c.eval.severities = ("gaussian_noise",), (1, 5)
        c.eval.cw_l2_examples, c.eval.cw_l2_binary_search_steps = 4, 1
        c.eval.cw_l2_max_iterations, c.eval.steps = 5, 3
        c.eval.autoattack_steps, c.eval.autoattack_queries = 5, 50
        c.temperatures, c.seeds = [1.0, 30.0], [0, 1]
    return c
