"""bench/fleet.py's figures come from these helpers: the percentiles it prints and the per-job rates it drives at."""

from __future__ import annotations


import pytest
from tests.bench_scripts import bench_script

fleet = bench_script("fleet")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert fleet.percentile(values, 0.5) == 50.0
    assert fleet.percentile(values, 0.99) == 99.0
    assert fleet.percentile(values, 1.0) == 100.0
    assert fleet.percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_nan() -> None:
    assert fleet.percentile([], 0.5) != fleet.percentile([], 0.5)


def test_rates_count_only_the_window() -> None:
    tally = fleet.Tally()
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        tally.add("progress", t)
    tally.add("metric_rows", 2.0, 10)
    tally.add("metric_rows", 9.0, 100)  # after the window: not steady state
    start, end = tally.window("progress")
    assert (start, end) == (0.0, 4.0)
    assert tally.rate("metric_rows", start, end) == pytest.approx(10 / 4)
    assert tally.rate("progress", start, end) == pytest.approx(5 / 4)
    assert tally.rate("absent", start, end) == 0.0


def test_classify_counts_rows_of_a_batch() -> None:
    assert fleet.classify("INSERT INTO metrics (job_id) VALUES (%(a)s)", [{}, {}, {}], True) == ("metric_rows", 3)
    assert fleet.classify("UPDATE jobs SET lease_expires_at=%(x)s WHERE ...", {}, False) == ("heartbeats", 1)
    assert fleet.classify("UPDATE jobs SET step=%(s)s, epoch=%(e)s", {}, False) == ("progress", 1)
    assert fleet.classify("SELECT jobs.status FROM jobs", {}, False) == ("status_reads", 1)
    assert fleet.classify("SELECT 1", {}, False) is None
