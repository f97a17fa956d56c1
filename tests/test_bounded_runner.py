"""The hostile-input runner measures the CLI's own memory, not the test process's."""

from __future__ import annotations

from helpers import run_bounded


def test_peak_rss_is_the_clis_own_even_from_a_large_test_process():
    ballast = bytearray(700 << 20)  # a test process grown large, as after hundreds of tests
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touched, so it is resident
    outcome = run_bounded("--version")
    del ballast
    assert outcome.returncode == 0 and not outcome.timed_out, outcome.stderr
    assert 0 < outcome.peak_rss < 500 << 20, outcome.peak_rss

