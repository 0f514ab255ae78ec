r"""Analyse trained runs: gradient, geometry, rank, PGD-logit and OOD figures plus a metrics table.

  python launch/analyze.py --workdirs='runs/analysis/*' --outdir=tables/figures \
      --table=tables/analysis_digits
  python launch/analyze.py --workdirs=runs/d_t1,runs/d_t50 --outdir=runs/figs --subsample=200
  python launch/analyze.py --workdirs='runs/analysis/*' --outdir=runs/figs --figures=tsne,rank

Each run is loaded from its workdir (`training.load_run`: config.json + latest checkpoint) and
analysed on its test split; nothing is retrained. The convergence figure reads the runs'
history.json files, grouped by (temperature, learning rate). Per-run figures show one run per
setting (the lowest seed); the table lists every run. The temperature T divides the logits.

Writes to --outdir: gradient_norms.png, prototype_direction.png, tsne.png, convergence.png,
pgd_logits.png, prototype_geometry.png, rank.png, ood.png; the per-run metrics table
<--table>.{csv,md} and the OOD table <--table>_ood.{csv,md} (one row per run and OOD set).
"""

import gc
import glob
import os
import sys

from absl import app, flags, logging

from tempscale_tf import cli

cli.quiet_tensorflow()
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import keras  # noqa: E402

from tempscale_tf import tables  # noqa: E402
from tempscale_tf.analysis import geometry, history, ood, plots, runs  # noqa: E402

flags.DEFINE_list(
    "workdirs", None, "Run workdirs, comma-separated; each entry may be a glob ('runs/x/*')."
)
flags.DEFINE_string("outdir", None, "Folder for the PNG figures.")
flags.DEFINE_string(
    "table", "", "Metrics table path without extension (default <outdir>/analysis_metrics)."
)
flags.DEFINE_integer("subsample", 0, "Analyse a seeded sample of this many test examples (0: all).")
flags.DEFINE_integer("pgd_steps", 10, "PGD iterations (0: no attack).")
flags.DEFINE_float("eps", 8 / 255, "L-inf PGD radius in [0, 1] pixel units (0: no attack).")
flags.DEFINE_float("pgd_step_size", 0.0, "PGD step size (0: eps / 4).")
flags.DEFINE_enum("pgd_loss", "ce", ["ce", "margin", "dlr"], "PGD loss (CE at the training T).")
flags.DEFINE_integer("tsne_examples", 1000, "Examples per t-SNE panel (0: no t-SNE).")
flags.DEFINE_list("ood_sets", [], "OOD sets (default per dataset: digits: noise/inverted/blurred).")
flags.DEFINE_list(
    "sweep_temperatures",
    [str(t) for t in runs.DEFAULT_SWEEP_TEMPERATURES],
    "Loss temperatures of the fixed-logits gradient sweep.",
)
flags.DEFINE_integer("seed", 0, "Seed of the test sample, t-SNE, PGD start and noise OOD set.")
flags.DEFINE_string("data_dir", "", "Override the runs' data_dir.")
flags.DEFINE_integer("batch_size", 256, "Inference / attack batch size.")
flags.DEFINE_multi_string("note", [], "Extra note lines for the tables (repeatable).")
flags.DEFINE_list(
    "figures",
    list(plots.FIGURES),
    f"Figures to draw (default all): {', '.join(plots.FIGURES)}. The tables are always written.",
)
flags.mark_flags_as_required(["workdirs", "outdir"])
FLAGS = flags.FLAGS


def expand_workdirs(entries):
    """Comma entries and globs -> sorted unique workdirs that hold a config.json."""
    found = []
    for entry in entries:
        matches = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry]
        if not matches:
            logging.warning("no workdir matches %s", entry)
        for path in matches:
            if os.path.isfile(os.path.join(path, "config.json")):
                found.append(os.path.normpath(path))
            else:
                logging.warning("skipping %s: no config.json (not a training workdir)", path)
    return sorted(dict.fromkeys(found))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.figures) - set(plots.FIGURES))
    if unknown:
        raise app.UsageError(f"Unknown --figures {unknown}; choose from {', '.join(plots.FIGURES)}")
    workdirs = expand_workdirs(FLAGS.workdirs)
    if not workdirs:
        print(f"error: no training workdirs in {FLAGS.workdirs}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.outdir, exist_ok=True)
    analyses = [_analyze(workdir) for workdir in workdirs]
    shown = runs.representatives(analyses)
    if FLAGS.tsne_examples and "tsne" in FLAGS.figures:
        _add_tsne(shown)
    _draw_figures(analyses, shown, workdirs)
    _write_tables(analyses)


def _analyze(workdir):
    logging.info("Analysing %s", workdir)
    analysis = runs.analyze_run(
        workdir,
        max_examples=FLAGS.subsample or None,
        seed=FLAGS.seed,
        eps=FLAGS.eps if FLAGS.pgd_steps else 0.0,
        pgd_steps=FLAGS.pgd_steps,
        pgd_step_size=FLAGS.pgd_step_size or None,
        pgd_loss=FLAGS.pgd_loss,
        tsne_examples=0,
        sweep_temperatures=tuple(float(t) for t in FLAGS.sweep_temperatures),
        ood_set_names=FLAGS.ood_sets or None,
        data_dir=FLAGS.data_dir or None,
        batch_size=FLAGS.batch_size,
    )
    keras.backend.clear_session()
    gc.collect()
    return analysis


def _add_tsne(shown):
    for a in shown:
        logging.info("t-SNE of %s", a.workdir)
        try:
            a.tsne = geometry.tsne_embedding(a.features, FLAGS.tsne_examples, FLAGS.seed)
        except ValueError as e:
            logging.warning("no t-SNE for %s: %s", a.workdir, e)
            a.tsne = str(e)


def _draw_figures(analyses, shown, workdirs):
    draw = {
        "gradient_norms": lambda: plots.plot_gradient_norms(shown),
        "prototype_direction": lambda: plots.plot_direction_cosines(analyses, shown),
        "tsne": lambda: plots.plot_tsne(shown),
        "convergence": lambda: plots.plot_convergence(history.convergence_curves(workdirs)),
        "pgd_logits": lambda: plots.plot_pgd_logits(shown),
        "prototype_geometry": lambda: plots.plot_prototype_geometry(shown),
        "rank": lambda: plots.plot_rank(analyses, shown),
        "ood": lambda: plots.plot_ood(shown),
    }
    for name in dict.fromkeys(FLAGS.figures):
        path = plots.save_figure(draw[name](), os.path.join(FLAGS.outdir, f"{name}.png"))
        print(f"Wrote {path}")


def _ood_rows(ordered):
    rows = []
    for a in ordered:
        for name in (n for n in a.ood_scores if n != "in"):
            row = {k: a.metrics[k] for k in ("run", "temperature", "lr", "lr_x_T", "seed")}
            row["accuracy"] = a.metrics["accuracy"]
            row["ood_set"] = name
            for score in ood.SCORES:
                for metric in ("auroc", "fpr95"):
                    row[f"{score}_{metric}"] = a.metrics[f"ood_{name}_{score}_{metric}"]
            rows.append(row)
    return rows


METRIC_NOTES = (
    "T divides the logits: CE(softmax(z / T), y); gradients and MSP/energy scores use each "
    "run's training T.",
    "erank: exp(entropy of normalised singular values) of the centred matrix (Roy & "
    "Vetterli 2007); nrank: singular values > s_max * max(N, D) * eps_float32.",
    "k_within_1pt: smallest number of principal directions of the test features whose "
    "projection keeps the accuracy (model's own head, nothing refit) within 1 point.",
    "proto_*: per-class mean/variance (averaged over classes) of ||f - mu_c|| and "
    "cos(f, mu_c), mu_c the class-mean test feature; proto_rel_dist_mean divides by ||mu_c||.",
    "dir_cos_*: cos(-dCE_T/df, mu_y - f), all samples / the 25% lowest-margin ones.",
    "hard_share: share of sum_i ||dCE_T/dz_i|| from the 25% lowest-margin samples; "
    "misclassified_share: from the misclassified ones; feature_hard_share: same in "
    "feature space (kernel @ (p - y) / T).",
    "grad_autodiff_rel_err: max |analytic - autodiff| / max |analytic| of the feature "
    "gradients (a consistency check).",
)
OOD_NOTES = (
    "In-distribution: the run's test examples (positives); OOD: uniform_noise = i.i.d. "
    "uniform pixels, inverted = 1 - x, blurred = Gaussian blur sigma H/12 of the same test "
    "images; cifar100/svhn for CIFAR-10 runs when present.",
    "Scores, higher = more in-distribution: msp = max softmax(z / T) at the training T, "
    "max_logit = max z, energy = T * logsumexp(z / T) (the negative energy -E(x)).",
    "auroc: rank-based, tie-aware (0.5 = chance; < 0.5: the OOD inputs score higher); "
    "fpr95: fraction of OOD inputs accepted at the threshold keeping 95% of the "
    "in-distribution inputs.",
)


def _write_tables(analyses):
    ordered = sorted(analyses, key=lambda a: (a.key, a.seed))
    rows = [{k: v for k, v in a.metrics.items() if not k.startswith("ood_")} for a in ordered]
    ood_rows = _ood_rows(ordered)
    skipped = sorted({f"{n}: {r}" for a in analyses for n, r in a.ood_skipped.items()})
    extra = [*[f"skipped OOD set {s}" for s in skipped], *FLAGS.note]
    step_size = FLAGS.pgd_step_size or None
    settings = {
        "runs": len(analyses),
        "test examples": FLAGS.subsample or "all",
        "PGD": f"L-inf eps={FLAGS.eps:.4g}, {FLAGS.pgd_steps} steps, "
        f"step {step_size or FLAGS.eps / 4:.4g}, loss {FLAGS.pgd_loss} at the training T",
        "seed": FLAGS.seed,
    }
    command = cli.command_line()
    stem = FLAGS.table or os.path.join(FLAGS.outdir, "analysis_metrics")
    tables.write_table(
        rows, stem, command=command, settings=settings, notes=[*METRIC_NOTES, *extra]
    )
    print(f"Wrote {stem}.csv and {stem}.md")
    if ood_rows:
        tables.write_table(
            ood_rows, f"{stem}_ood", command=command, settings=settings, notes=[*OOD_NOTES, *extra]
        )
        print(f"Wrote {stem}_ood.csv and {stem}_ood.md")


if __name__ == "__main__":
    cli.run(main)
