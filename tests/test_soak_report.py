"""The soak's memory reading: growth of the median RSS between five-minute spans."""

from __future__ import annotations

import pytest

from sodd.commands.soak import Window, span_growth


def windows_with(rss_at: dict[float, list[int]]) -> list[Window]:
    return [Window(start_s=start, rss_samples_kib=samples) for start, samples in sorted(rss_at.items())]


def test_growth_compares_minutes_5_to_10_with_the_last_five() -> None:
    windows = windows_with({0: [500], 300: [1000, 1000, 5000], 600: [2000], 900: [1100, 1100, 1]})
    assert span_growth(windows, duration=1200) == pytest.approx(0.1)


def test_a_peak_during_a_swap_does_not_move_the_reading() -> None:
    steady = {float(t): [1000] * 14 + [1400] for t in range(0, 1800, 30)}
    assert span_growth(windows_with(steady), duration=1800) == 0.0


def test_a_run_too_short_for_two_spans_after_the_first_five_minutes_has_no_reading() -> None:
    assert span_growth(windows_with({0: [1], 300: [1], 600: [1]}), duration=840) is None
