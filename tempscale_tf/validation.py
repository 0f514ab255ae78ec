"""Argument checks shared by the library. Every check raises with a message naming the problem."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_temperature(temperature, name: str = "temperature") -> float:
    """Return `temperature` as a Python float, or raise `ValueError`.

    The temperature always *divides* the logits (`softmax(z / T)`), so it must be a
    finite number strictly greater than zero. Nothing is clipped: a bad value is an error.

    Args:
      temperature: a Python or numpy scalar (or a 0-d array).
      name: the argument's name, used in the error message.
    """
    if isinstance(temperature, bool):
        raise ValueError(
            f"`{name}` must be a positive finite number, received a bool: {temperature!r}"
        )
    if isinstance(temperature, np.ndarray):
        if temperature.shape != ():
            raise ValueError(
                f"`{name}` must be a scalar, received an array of shape {temperature.shape}"
            )
        temperature = temperature.item()
    if not isinstance(temperature, numbers.Real):
        try:  # tf scalars in eager mode
            temperature = float(temperature)
        except (TypeError, ValueError):
            raise ValueError(
                f"`{name}` must be a positive finite number, received {temperature!r} "
                f"of type {type(temperature).__name__}"
            ) from None
    value = float(temperature)
    if math.isnan(value):
        raise ValueError(f"`{name}` must be a positive finite number, received NaN")
    if math.isinf(value):
        raise ValueError(f"`{name}` must be a positive finite number, received {value}")
    if value <= 0.0:
        raise ValueError(f"`{name}` must be > 0 (it divides the logits), received {value}")
    return value


def check_image_shape(image_shape, name: str = "image_shape") -> tuple[int, int, int]:
    """Validate an (height, width, channels) image shape and return it as a tuple."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise ValueError(
            f"`{name}` must be (height, width, channels), received {image_shape!r}"
        ) from None
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(
            f"`{name}` must be three positive integers (height, width, channels), "
            f"received {image_shape!r}"
        )
    return shape


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, received {value!r}")
    return int(value)
