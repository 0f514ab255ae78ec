r"""Clean vs worst-case robust accuracy of a sweep's runs, and the verdict per temperature.

  python launch/tradeoff.py --runs=tables/table3_v2_cifar10_fast_cifar_runs.csv \
      --out=tables/table3_v2_verdict --figure=tables/figures/table3_v2_tradeoff.png

The runs at `--reference_temperature` (the equal-accuracy control: other adversarial weights or
objectives) trace a curve; each other temperature's mean point is compared with the curve at its
clean accuracy, and its excess with the seed spread, floored at two binomial standard errors
(`tempscale_tf.analysis.tradeoff`).
"""

import dataclasses

from absl import app, flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import tables  # noqa: E402
from tempscale_tf.analysis import plots, tradeoff  # noqa: E402

flags.DEFINE_string("runs", None, "A sweep's per-run CSV (`<table>_runs.csv`).")
flags.DEFINE_string("out", None, "Verdict table (without extension).")
flags.DEFINE_string("figure", None, "PNG of clean vs worst-case accuracy.")
flags.DEFINE_float("reference_temperature", 1.0, "The temperature whose runs trace the curve.")
flags.DEFINE_string("x", "clean", "Column on the x axis.")
flags.DEFINE_string("y", "worst_case", "Robust accuracy column on the y axis.")
flags.mark_flags_as_required(["runs", "out", "figure"])
FLAGS = flags.FLAGS


def _dominated(runs, x, y, t) -> str:
    points = tradeoff.reference_points(runs, x, y, t)
    names = [v or "default" for v in points.index[points["dominated"]]]
    return "dominated: " + ", ".join(names) if names else "none is dominated"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runs = tables.read_table(FLAGS.runs)  # a missing file: one clear error line (cli.run)
    t, x, y = FLAGS.reference_temperature, FLAGS.x, FLAGS.y
    rows = [dataclasses.asdict(v) for v in tradeoff.verdicts(runs, x, y, t)]
    figure = tradeoff.plot_tradeoff(runs, x, y, t, title=FLAGS.runs.rsplit("/", 1)[-1])
    plots.save_figure(figure, FLAGS.figure)
    tables.write_table(
        rows,
        FLAGS.out,
        command=cli.command_line(),
        settings={"runs": FLAGS.runs, "x": x, "y": y, "reference_temperature": t},
        notes=[
            f"curve: the T={t:g} frontier (its settings, each averaged over its seeds, without "
            f"those another T={t:g} setting beats in both {x} and {y}: "
            f"{_dominated(runs, x, y, t)}), linearly interpolated at the other temperatures' "
            f"mean {x}; no extrapolation, except that below the frontier's {x} range the curve is "
            f"its least accurate point's {y} (a T={t:g} model more accurate than the run), so a "
            "run below it by more than the threshold is dominated: a loss.",
            "spread: the largest max - min of the robust accuracy over the seeds of one setting.",
            "sampling_se: the binomial standard error sqrt(p (1 - p) / n) of the run's robust "
            "accuracy p on its n attacked images (eval/num_examples; 0 if the runs lack it).",
            "threshold: max(spread, 2 sampling_se), so that two seeds that happen to agree do "
            "not make a difference of a few images a finding.",
            "verdict: 'real gain' if excess > threshold, 'loss' if excess < -threshold, else "
            "'within noise'.",
            f"figure: {FLAGS.figure}",
        ],
    )
    print(open(FLAGS.out + ".md").read())


if __name__ == "__main__":
    cli.run(main)
