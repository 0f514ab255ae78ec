r"""The digits runs behind the committed analysis figures (tables/figures/, tables/analysis_digits).

The small CNN of `configs/digits_small.py` (same settings but lr 0.1) for 20 epochs, without
export or TensorBoard histograms (the analysis reads the checkpoints and history.json).
The grid: temperatures {0.1, 1, 10, 50} x lr {0.1, 0.01} x seeds {0, 1}, plus lr x T
(`scale_lr_with_temperature`: lr 0.1 x T, weight decay / T) at T in {0.1, 10, 50} x seeds {0, 1};
about a minute per run on 2 CPU cores:

  for s in 0 1; do for lr in 0.1 0.01; do for t in 0.1 1 10 50; do
    python launch/train.py --config=configs/analysis_digits.py --temperature=$t --lr=$lr \
      --seed=$s --progress=false --workdir=runs/analysis/digits_t${t}_lr${lr}_s$s; done; done
    for t in 0.1 10 50; do
    python launch/train.py --config=configs/analysis_digits.py --temperature=$t --lr=0.1 \
      --seed=$s --scale_lr_with_temperature --progress=false \
      --workdir=runs/analysis/digits_t${t}_lr0.1xT_s$s; done; done
  python launch/analyze.py --workdirs='runs/analysis/*' --outdir=tables/figures \
      --table=tables/analysis_digits

`:smoke` shrinks a run to 2 epochs on 256 training images.
"""

from tempscale_tf.config_files import load_config


def get_config(arg=None):
    c = load_config("digits_small.py", relative_to=__file__)
    c.epochs = 20
    c.lr = 0.1
    c.export = False
    c.histogram_examples = 0
    if arg == "smoke":
        c.epochs = 2
        c.train_subset = 256
    return c
