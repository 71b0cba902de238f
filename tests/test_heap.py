"""sodd serve caps glibc's malloc arenas, unless the operator chose a number."""

from __future__ import annotations

import pytest

from sodd.runtime import heap


def test_the_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "6")
    assert heap.limit_arenas() == 6


def test_one_arena_per_core_and_at_least_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(heap, "usable_cores", lambda: 1)
    assert heap.default_arenas() == 2
    monkeypatch.setattr(heap, "usable_cores", lambda: 16)
    assert heap.default_arenas() == 16
    # glibc (these machines) takes the setting; elsewhere the call says it could not.
    assert heap.limit_arenas(3) in (3, None)
