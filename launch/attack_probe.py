r"""Probe one model for gradient masking: robust accuracy under several PGD settings and APGD,
in the model's precision and in float32 (`tempscale_tf.analysis.attack_probe`).

  python launch/attack_probe.py --keras_model=tables/models/cifar10_fast_t1/model.keras \
      --dataset=cifar10 --data_dir=../shared/data --num_examples=200 --out=tables/probe_t1

A large spread between the settings (plain PGD far above APGD) means PGD's numbers for this
model are inflated; equal numbers in bfloat16 and float32 rule out the precision as the cause.
"""

from absl import app, flags

from tempscale_tf import cli

cli.quiet_tensorflow()
from tempscale_tf import evaluation, machine, tables  # noqa: E402
from tempscale_tf.analysis import attack_probe  # noqa: E402
from tempscale_tf.export import load_keras_model  # noqa: E402

flags.DEFINE_string("keras_model", None, "A `.keras` model file (with tempscale_info.json).")
flags.DEFINE_string("dataset", None, "Dataset name.")
flags.DEFINE_string("data_dir", None, "Data folder (default: the dataset's default).")
flags.DEFINE_integer("num_examples", 200, "Test examples (the evaluation's fixed sample).")
flags.DEFINE_float("eps", 8 / 255, "L-inf radius.")
flags.DEFINE_integer("steps", 20, "PGD iterations of the base setting.")
flags.DEFINE_float("temperature", None, "CE temperature of the attacks (default: 1).")
flags.DEFINE_bool("float32", True, "Also attack a float32 copy of a lower-precision model.")
flags.DEFINE_string("out", None, "Table path without extension.")
flags.DEFINE_integer("seed", 0, "The attacks' seed.")
flags.mark_flags_as_required(["keras_model", "dataset", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    model, info = load_keras_model(FLAGS.keras_model)
    x, y = evaluation.subset_arrays(FLAGS.dataset, "test", FLAGS.data_dir, FLAGS.num_examples)
    attack_temperature = 1.0 if FLAGS.temperature is None else FLAGS.temperature
    rows = attack_probe.probe(
        model,
        x,
        y,
        FLAGS.eps,
        attack_probe.default_settings(FLAGS.eps, FLAGS.steps),
        temperature=attack_temperature,
        with_float32=FLAGS.float32,
        seed=FLAGS.seed,
    )
    tables.write_table(
        rows,
        FLAGS.out,
        command=cli.command_line(),
        settings={
            "model": FLAGS.keras_model,
            "training temperature": info["temperature"],
            "dataset": FLAGS.dataset,
            "examples": len(y),
            "eps": FLAGS.eps,
            "attack CE temperature": attack_temperature,
            "seed": FLAGS.seed,
            "machine": machine.cpu_description(),
        },
        notes=attack_probe.summary(rows),
    )
    print(open(FLAGS.out + ".md").read())


if __name__ == "__main__":
    cli.run(main)
