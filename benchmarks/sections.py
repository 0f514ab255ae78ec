"""The names of the benchmark groups, importable without TensorFlow (for `launch/bench.py`'s
flag defaults, so `--help` stays quick)."""

# The benchmark groups `benchmarks.suite.run` can run (all by default), in the order they run.
SECTIONS = (
    "train_step",
    "input_pipeline",
    "attacks",
    "autoattack",
    "corruptions",
    "iterator_teardown",
    "onednn",
)
