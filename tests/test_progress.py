"""`progress.Progress`: log lines with the rate and ETA, throttled, or a Keras progress bar."""

from tempscale_tf.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_lines_are_throttled_and_give_rate_and_eta():
    clock = _Clock()
    p = Progress(10, "AutoAttack batches", log_every_s=60, clock=clock)
    clock.now += 30
    p.update(1, [("robust_acc", 0.5)])  # 30 s after the start: too soon
    assert p.lines == []
    clock.now += 30
    p.update(2, [("robust_acc", 0.25)])  # 60 s, 2 of 10: 30 s each, 8 left -> 240 s
    assert p.lines == ["AutoAttack batches: 2/10, 30.0 s each, ETA 0:04:00, robust_acc 0.2500"]
    clock.now += 10
    p.update(3)
    assert len(p.lines) == 1
    clock.now += 1
    p.update(10)  # the last step is always logged
    assert p.lines[-1] == "AutoAttack batches: 10/10, 7.1 s each, ETA 0:00:00"


def test_unknown_total_has_no_eta_and_a_bar_logs_nothing():
    clock = _Clock()
    p = Progress(None, "batches", log_every_s=0, clock=clock)
    clock.now += 5
    p.update(1)
    assert p.lines == ["batches: 1/?, 5.0 s each"]
    bar = Progress(3, "batches", bar=True, log_every_s=0, clock=clock)
    bar.update(3, [("clean_acc", 1.0)])
    assert bar.lines == [] and bar.bar is not None
    silent = Progress(3, "batches", bar=None, log_every_s=0, clock=clock)
    silent.update(3, [("clean_acc", 1.0)])
    assert silent.lines == [] and silent.bar is None
