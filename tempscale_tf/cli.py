"""Helpers for the absl entry scripts in `launch/` (library modules never parse flags).

`define_config_overrides(default_config())` defines one top-level flag per config field, so that
`python launch/train.py --config=configs/x.py --temperature=70` works as well as the
ml_collections form `--config.temperature=70`. A flag given on the command line wins over the
config file; nested fields (e.g. `model_kwargs`) use the `--config.model_kwargs.width=32` form.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import flags

_OVERRIDES: dict[str, str] = {}
# Fields that take true, false or "auto" (a string flag; "true"/"false" become booleans).
_BOOL_OR_AUTO = ("mixed_precision",)


def command_line(drop: tuple[str, ...] = (), argv: list[str] | None = None) -> str:
    """This process's command as a user would type it (recorded in results tables).

    Args:
      drop: flag names (without dashes) left out of the recorded command, in any of their
        spellings (`--name`, `--name=value`, `--noname`, `-name`).
      argv: the arguments (default `sys.argv`).
    """
    import shlex
    import sys

    args = list(sys.argv if argv is None else argv)

    def dropped(arg: str) -> bool:
        name = arg.lstrip("-").split("=", 1)[0]
        return arg.startswith("-") and any(name in (d, "no" + d) for d in drop)

    kept = args[:1] + [a for a in args[1:] if not dropped(a)]
    return "python " + " ".join(shlex.quote(a) for a in kept)


def run(main) -> None:
    """`absl.app.run(main)`, reporting a user's error as one `error: ...` line and exit code 2.

    Errors of the types in `tempscale_tf.errors.USER_ERRORS` (bad settings, missing or corrupt
    files, a diverged run) are bad input, not bugs: they are printed without a traceback (set
    `TEMPSCALE_TRACEBACK=1` to see it). Any other exception keeps its traceback.
    """
    import sys

    from absl import app

    from tempscale_tf.errors import USER_ERRORS

    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if os.environ.get("TEMPSCALE_TRACEBACK"):
                raise
            message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            print(f"error: {message or type(e).__name__}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python info logs (call before importing TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(std_logging.ERROR)
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    # TensorFlow and Keras also log INFO lines through absl (e.g. one per checkpoint saved):
    # keep absl's INFO for our own messages only.
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_drop_third_party_info)


def _drop_third_party_info(record) -> bool:
    return record.levelno >= std_logging.WARNING or "site-packages" not in record.pathname


def define_config_overrides(config, flag_values=flags.FLAGS, skip=()) -> None:
    """Define a `--<field>` flag (default None) for every scalar/sequence field of `config`.

    Args:
      config: the `ConfigDict` whose top-level fields get flags (nested dicts are skipped).
      flag_values: the absl `FlagValues` to define them in.
      skip: field names that get no flag (e.g. ones the script defines itself).
    """
    for key, value in config.items():
        if key in skip or key in flag_values:
            continue
        help_text = f"Override config.{key} (default from the config file: {value!r})."
        if hasattr(value, "items"):
            continue
        if isinstance(value, bool) or (value is None and key in ("jit_compile",)):
            flags.DEFINE_bool(key, None, help_text, flag_values=flag_values)
        elif isinstance(value, int):
            flags.DEFINE_integer(key, None, help_text, flag_values=flag_values)
        elif isinstance(value, float):
            flags.DEFINE_float(key, None, help_text, flag_values=flag_values)
        elif isinstance(value, (tuple, list)):
            flags.DEFINE_list(key, None, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(key, None, help_text, flag_values=flag_values)
        _OVERRIDES[key] = key


def apply_config_overrides(config, flag_values=flags.FLAGS):
    """Copy every override flag that was given on the command line into `config`."""
    for key in _OVERRIDES:
        if key not in flag_values or key not in config:
            continue
        value = flag_values[key].value
        if value is None:
            continue
        default = config[key]
        if key in _BOOL_OR_AUTO and str(value).lower() in ("true", "false", "1", "0"):
            value = str(value).lower() in ("true", "1")
        if isinstance(default, tuple):
            value = tuple(type(default[0])(v) if default else v for v in value)
        with config.unlocked() if hasattr(config, "unlocked") else _null():
            config[key] = value
    return config


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
