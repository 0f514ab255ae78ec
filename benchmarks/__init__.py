"""Benchmarks measured side by side in one process: medians over repeats, warm-up excluded.

Not part of the installed library: they import the test-only oracles (cleverhans, IBM ART) and
are run from a checkout (`launch/bench.py` puts the repository root on `sys.path`; pytest's
`pythonpath = .` does the same for the tests). Each `bench_*` function returns a list of row
dicts `{"benchmark", "variant", "value", "unit", ...settings}` (`timing.row`); `launch/bench.py`
runs them and writes `tables/bench.csv` and a Markdown summary. Nothing here asserts a speed:
ratios are reported, never tested.

Modules:

  - `sections`: the benchmark groups' names (imports no TensorFlow);
  - `timing`: `time_call`, `time_interleaved` (variants timed in turns), `row`;
  - `train_step`: `bench_train_step`, the step `tempscale_tf.training.train` runs (built by
    `training.make_train_step`: weight decay, the distribution strategy, the optimizer's
    schedule, mixed precision), not a copy of it, vs `model.fit`;
  - `flops`: forward FLOPs, measured matmul peaks, and the training step's share of them;
  - `pipeline`: the input pipeline and the CIFAR-10-C corruptions;
  - `attacks`: PGD vs cleverhans, in this process and in fresh processes
    (`bench_pgd_processes`: one process's figure is not representative, see its docstring),
    robust-accuracy evaluation, C&W-L2;
  - `autoattack`: AutoAttack vs IBM ART on models fit on the digits data.

The machine a table was measured on is described by `tempscale_tf.machine`.
"""
