"""tempscale_tf: the softmax temperature as a first-class training and evaluation knob."""

import os as _os

# oneDNN (TensorFlow's MKL kernels). TensorFlow turns it on by default only on CPUs with
# AVX512-VNNI/BF16 or AMX; on a CPU with AVX2 only it stays off, and there the training step of
# the fast CIFAR net measured 1.5-1.9x faster with it on (`launch/bench.py
# --sections=onednn`, tables/bench_onednn.md). TensorFlow reads this once, when it loads, so it
# takes effect only when tempscale_tf is imported before TensorFlow (the launch scripts and the
# tests do); an explicit TF_ENABLE_ONEDNN_OPTS=0 is respected. `machine.onednn_enabled()` says
# whether it is on in this process.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
