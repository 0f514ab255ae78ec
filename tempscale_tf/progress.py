"""Progress of long loops: a Keras progress bar, or absl log lines with rate and ETA.

Evaluation inside a sweep runs without progress bars (their carriage returns make unreadable log
files), but an AutoAttack stage can take an hour on 2 cores: `Progress` then logs a line with the
rate, the ETA and the running metrics at most every `log_every_s` seconds, and at the end.
"""

from __future__ import annotations

import datetime
import time

import keras
from absl import logging


class Progress:
    """`update(step, values)` like `keras.utils.Progbar`.

    Args:
      total: the number of steps, or None when unknown (no ETA).
      label: what is counted, at the start of each log line (e.g. "AutoAttack").
      bar: True: show a `keras.utils.Progbar` (and log nothing); False: log; None: neither
        (a caller that reports the progress itself).
      stateful_metrics: names whose value is the running value, not averaged (as in Progbar);
        in log lines every value is shown as given.
      log_every_s: at most one log line per this many seconds (and always the last step).
      clock: a `time.monotonic`-like function (tests).
    """

    def __init__(
        self, total, label, bar=False, stateful_metrics=None, log_every_s=60.0, clock=None
    ):
        self.total, self.label, self.log_every_s = total, label, float(log_every_s)
        self.clock = clock or time.monotonic
        self.start = self.last_log = self.clock()
        self.silent = bar is None
        self.bar = (
            keras.utils.Progbar(total, stateful_metrics=stateful_metrics, verbose=1)
            if bar
            else None
        )
        self.lines = []  # the log lines written (for tests and callers)

    def update(self, step, values=None):
        if self.silent:
            return
        if self.bar is not None:
            self.bar.update(step, values=values)
            return
        now = self.clock()
        last = self.total is not None and step >= self.total
        if not last and now - self.last_log < self.log_every_s:
            return
        self.last_log = now
        elapsed = now - self.start
        rate = elapsed / max(step, 1)
        text = f"{self.label}: {step}/{self.total if self.total is not None else '?'}"
        text += f", {rate:.1f} s each"
        if self.total is not None:
            remaining = max(self.total - step, 0) * rate
            text += f", ETA {datetime.timedelta(seconds=round(remaining))}"
        for name, value in values or ():
            text += f", {name} {value:.4f}"
        self.lines.append(text)
        logging.info("%s", text)
