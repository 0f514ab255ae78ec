r"""Evaluation settings for CIFAR-style 32x32 models: L-inf eps 8/255, step 2/255, PGD-20.

  python launch/evaluate.py --workdir=runs/c10_r20_t50 --eval_config=configs/eval_cifar.py

`:quick` evaluates 200 examples, 3 corruptions at severities 1, 3, 5 and C&W-L2 on 20 examples.
"""

from tempscale_tf.evaluation import default_eval_config


def get_config(arg=None):
    c = default_eval_config()
    if arg == "quick":
        c.num_examples = 200
        c.corruptions = ("gaussian_noise", "defocus_blur", "fog")
        c.severities = (1, 3, 5)
        c.cw_l2_examples = 20
        c.cw_l2_binary_search_steps = 3
        c.cw_l2_max_iterations = 30
        c.autoattack_steps = 20
        c.autoattack_queries = 200
    return c
