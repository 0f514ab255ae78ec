r"""Distillation on the embedded `digits` data: a small_cnn teacher (width 16, the
`digits_small.py` run) distilled into a small_cnn student of width 4 at several temperatures.

  python launch/distill.py                      # the committed table (a few CPU minutes)
  python launch/distill.py --config=configs/distill_digits.py:smoke --workdir=/tmp/d

`teacher_workdir` reuses a finished training run as the teacher (otherwise it is trained into
`<workdir>/teacher`, or reused from there when it is already finished).
"""

import ml_collections

from tempscale_tf.config_files import load_config


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.teacher = load_config(
        "digits_small.py", relative_to=__file__
    )  # small_cnn width 16, 30 epochs, T = 1
    c.teacher.histogram_examples = 0
    c.teacher_workdir = ""  # "" -> <workdir>/teacher
    c.dataset = "digits"
    c.data_dir = ""
    c.train_split = "train"
    c.test_split = "test"
    c.train_subset = 0  # 0 -> the whole split
    c.augment = True
    c.student_model = "small_cnn"
    c.student_model_kwargs = ml_collections.ConfigDict({"width": 4})
    c.epochs = 15
    c.batch_size = 64
    c.lr = 0.1
    # None -> XLA on GPU only (it is slower than graph mode for these small CPU models).
    c.jit_compile = ml_collections.config_dict.placeholder(bool)
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.temperatures = (1.0, 2.0, 4.0, 8.0, 20.0)
    c.alphas = (0.1, 0.5)  # weight of the hard-label cross-entropy
    c.seeds = (0,)
    if arg == "smoke":
        c.teacher.epochs = 1
        c.teacher.train_subset = 256
        c.teacher.export = False
        c.epochs = 1
        c.train_subset = 256
        c.temperatures = (1.0, 4.0)
        c.alphas = (0.5,)
    return c
