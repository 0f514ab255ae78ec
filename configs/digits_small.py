r"""Small CNN on the embedded `digits` dataset (no files needed): the demo and test config.

  python launch/train.py --config=configs/digits_small.py --temperature=50 --workdir=runs/d_t50

About 1 minute on a 2-core CPU (30 epochs of 11 steps). `--config=configs/digits_small.py:smoke`
shrinks it to 2 epochs.
"""

from tempscale_tf.training import default_config


def get_config(arg=None):
    c = default_config()
    c.mixed_precision = False  # the committed tables were made in float32
    c.dataset = "digits"
    c.model = "small_cnn"
    c.model_kwargs.width = 16
    c.temperature = 1.0
    c.epochs = 30
    c.batch_size = 128
    c.lr = 0.05
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    if arg == "smoke":
        c.epochs = 2
    return c
