"""RateWindow: a rate that follows the work, from the first unit of this run."""

from __future__ import annotations

import pytest

from scrapy_checkpoint.metrics import Metrics, RateWindow, eta_total


def _feed(window: RateWindow, start: float, end: float, processed: float, per_s: float) -> float:
    """Samples every 0.25 s from ``start`` to ``end`` at ``per_s`` units a second; returns
    the count at ``end``."""
    t = start
    while t < end - 1e-9:
        t += 0.25
        processed += per_s * 0.25
        window.add(t, int(processed))
    return processed


def test_three_seconds_after_the_rate_changes_the_rate_is_the_new_one() -> None:
    window = RateWindow(3.0)
    window.begin(0)
    processed = _feed(window, 0.0, 20.0, 0, 200)
    assert window.rate() == pytest.approx(200, rel=0.01)
    processed = _feed(window, 20.0, 23.0, processed, 50)
    assert window.rate() == pytest.approx(50, rel=0.02)  # a 60 s average would say 185


def test_a_slow_stage_is_measured_over_its_last_units_not_one() -> None:
    window = RateWindow(3.0, min_units=20)
    window.begin(0)
    _feed(window, 0.0, 120.0, 0, 0.5)  # one unit every two seconds
    rate = window.rate()
    assert rate is not None
    assert rate == pytest.approx(0.5, rel=0.1)


def test_a_resume_measures_from_its_first_unit_not_from_its_start() -> None:
    window = RateWindow(3.0)
    window.begin(1000)  # 1000 done by earlier runs
    for t in (0.25, 0.5, 1.0, 2.0, 4.0):  # start-up: nothing finished yet
        window.add(t, 1000)
    assert window.rate() is None
    _feed(window, 4.0, 6.0, 1000, 40)
    assert window.rate() == pytest.approx(40, rel=0.05)


def test_the_line_says_100_percent_only_when_all_is_done() -> None:
    almost = Metrics(total=3000, processed=2999, successful=2999, failed=0, skipped=0,
                     throughput=10.0, elapsed_seconds=5)
    assert "Progress: 99.9% (2999/3000)" in almost.progress_line()
    done = Metrics(total=3000, processed=3000, successful=3000, failed=0, skipped=0,
                   throughput=10.0, elapsed_seconds=5)
    assert "Progress: 100.0% (3000/3000)" in done.progress_line()


def test_the_eta_counts_on_the_size_given_for_it_the_percent_on_the_total() -> None:
    """A crawl whose chain of pages may go on: the percent counts on the total shown (a
    longer run), the ETA on ``eta_total`` (the chain's median run), as committed in the
    estimate's attached data."""
    chain = Metrics(total=3000, processed=1000, successful=1000, failed=0, skipped=0,
                    throughput=100.0, elapsed_seconds=10, estimated=True,
                    eta_total=eta_total({"low": 1020, "high": 4000, "eta_total": 2000}))
    assert chain.eta_total == 2000
    assert chain.percent == pytest.approx(100 / 3)
    assert chain.eta_seconds == pytest.approx(10.0)  # 1000 left at 100/s, not 2000
    assert "ETA: 10 s" in chain.progress_line()
    plain = Metrics(total=3000, processed=1000, successful=1000, failed=0, skipped=0,
                    throughput=100.0, elapsed_seconds=10,
                    eta_total=eta_total({"low": 1020, "high": 4000}))
    assert plain.eta_total is None
    assert plain.eta_seconds == pytest.approx(20.0)
    assert eta_total(None) is None
    assert eta_total({"eta_total": "2000"}) is None
    done = Metrics(total=3000, processed=3000, successful=3000, failed=0, skipped=0,
                   throughput=100.0, elapsed_seconds=10, eta_total=2000)
    assert done.eta_seconds == 0.0
