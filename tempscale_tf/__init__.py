"""tempscale_tf: the softmax temperature as a first-class training and evaluation knob."""

__version__ = "0.1.0"
