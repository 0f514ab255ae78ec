r"""CPU-scale Table III: adversarial training with the paper's objective (Eq. 12) on CIFAR-10.

  python launch/sweep.py --config=configs/sweep_cifar10_at_cpu.py --workdir=runs/sweep_c10_at_cpu

L = CE(F(x)/T, y) + CE(F(x_adv), y), x_adv by PGD-5 (eps 8/255, step 2/255, CE at T=1) inside each
training step; evaluated with PGD-20 at the training T, margin PGD, targeted PGD, DLR and the
worst case. A small CNN (width 16) on a 5,000-image subset for 8 epochs, one seed: adversarial
training costs 6 forward/backward passes per step, which is what this 2-core CPU allows
(about 8 CPU-minutes per cell).
`:madry` trains with the Madry objective CE(F(x_adv)/T, y) instead, for comparison.
"""

import ml_collections

from tempscale_tf import paper
from tempscale_tf.evaluation import default_eval_config
from tempscale_tf.training import default_config


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.train = default_config()
    c.train.mixed_precision = False  # the committed tables were made in float32
    c.train.data_dir = "../shared/data"
    c.train.model = "small_cnn"
    c.train.model_kwargs.width = 16
    c.train.train_subset = 5000
    c.train.test_subset = 1000
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.lr = 0.05
    c.train.weight_decay = 5e-4
    c.train.export = False
    c.train.histogram_examples = 512
    c.train.adv_train = True
    c.train.adv_objective = "madry" if arg == "madry" else "paper"
    c.train.adv_steps = 5
    c.train.adv_eps = 8 / 255
    c.train.adv_step_size = 2 / 255
    c.eval = default_eval_config()
    c.eval.num_examples = 300
    c.eval.corruptions = ()
    c.eval.cw_l2_examples = 0
    c.datasets = ["cifar10"]
    c.temperatures = list(paper.PAPER_AT_TEMPERATURES)
    c.seeds = [0]
    c.table_dir = "tables"
    c.table_prefix = "table3_madry" if arg == "madry" else "table3"
    c.notes = [
        "CPU scale: small_cnn (width 16) adversarially trained on a fixed 5,000-image subset of "
        "CIFAR-10 for 8 epochs with PGD-5, one seed, evaluated on 300 test images; the paper "
        "uses ResNet50/ViT for 200 epochs.",
        "Same learning rate at every T (the adversarial term is plain CE, so training does not "
        "stall at high T).",
    ]
    return c
