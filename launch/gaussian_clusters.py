r"""The Gaussian-cluster experiment: recover the Bayes temperature T = 2 sigma^2.

  python launch/gaussian_clusters.py                # tables/gaussian_clusters.{csv,md}

Two classes N(+-mu, sigma^2 I) with equal priors: the Bayes posterior is
softmax(-||x - mu_k||^2 / T) with T = 2 sigma^2 (T divides the squared-distance logits). A model
with logits -||x - c_k||^2 / T, learnable centres c_k and a learnable log T is fitted by
cross-entropy, for each --sigmas, in three variants (see tempscale_tf/gaussian.py): centres fixed
at the class means; centres learned with the anchor term; centres learned with CE only (then T
is not identifiable, only T rescaled to the class means' spread is).
"""

from absl import app, flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import gaussian, tables  # noqa: E402

flags.DEFINE_list("sigmas", ["0.5", "1", "2"], "Class standard deviations.")
flags.DEFINE_integer("num_train", 20_000, "Training examples per sigma.")
flags.DEFINE_integer("num_test", 20_000, "Test examples per sigma.")
flags.DEFINE_integer("dim", 2, "Input dimension.")
flags.DEFINE_float("separation", 2.0, "Distance between the two class means.")
flags.DEFINE_integer("steps", 1500, "Full-batch Adam steps per fit.")
flags.DEFINE_float("anchor_weight", 1.0, "Weight of mean ||x - c_y||^2 for learned centres.")
flags.DEFINE_integer("seed", 0, "Data seed.")
flags.DEFINE_string("table", "tables/gaussian_clusters", "Output table (without extension).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    rows = gaussian.run_gaussian_experiment(
        sigmas=[float(s) for s in FLAGS.sigmas],
        num_train=FLAGS.num_train,
        num_test=FLAGS.num_test,
        dim=FLAGS.dim,
        separation=FLAGS.separation,
        steps=FLAGS.steps,
        anchor_weight=FLAGS.anchor_weight,
        seed=FLAGS.seed,
    )
    settings = {
        "classes": "2, equal priors, means +-separation/2 e_1",
        "dim": FLAGS.dim,
        "separation": FLAGS.separation,
        "num_train": FLAGS.num_train,
        "num_test": FLAGS.num_test,
        "optimizer": f"full-batch Adam, lr 0.05 cosine, {FLAGS.steps} steps, T_init = 1",
        "anchor_weight": FLAGS.anchor_weight,
        "seed": FLAGS.seed,
    }
    command = cli.command_line()
    table = tables.write_table(
        rows,
        FLAGS.table,
        command=command,
        settings=settings,
        notes=[
            "Model: softmax(-||x - c_k||^2 / T); Bayes: c_k = mu_k and T_bayes = 2 sigma^2 "
            "(T divides the squared-distance logits).",
            "class_means: centres fixed at the class sample means, T fitted by CE. "
            "learned+anchor: centres and T fitted by CE + anchor_weight * mean ||x - c_y||^2. "
            "learned, CE only: CE cannot separate T from the centres' scale (scaling both by a "
            "gives the same posterior), so T_fitted is arbitrary (set by the initialisation); "
            "T_rescaled = T * spread(class means) / spread(centres) is the identified part.",
            "centre_error: max_k ||c_k - mu_k||. test_nll vs bayes_test_nll: the fitted "
            "posterior against the true one on fresh data.",
        ],
    )
    print(table)


if __name__ == "__main__":
    cli.run(main)
