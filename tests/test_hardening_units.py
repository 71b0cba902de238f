"""Unit checks of the attack review's fixes that need no daemon: log lines that cannot be forged
or flooded, bounded names, repository names with control characters, LoadModel remembering
nothing for made-up names, the model watcher surviving any failure, and the open files limit."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import watchfiles

from sodd.config.schema import ServeConfig
from sodd.errors import InvalidArgument, NotFound
from sodd.model.names import check_name
from sodd.observability.logs import JsonFormatter, TextFormatter, escape, quote, request_message
from sodd.runtime import manager as manager_module
from sodd.runtime import repository
from sodd.runtime.manager import ModelManager
from sodd.runtime.repository import scan_repository
from sodd.serving.budgets import raise_open_files_limit

FORGED = "abc\nWARNING sodd.forged: the daemon was compromised"


def formatted(formatter: logging.Formatter, *args: Any, msg: str = "request_id=%s failed",
              exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("sodd.test-hardening")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        logger.warning(msg, *args, exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
    finally:
        logger.handlers.clear()
    return stream.getvalue()


def test_text_lines_escape_every_argument_and_stay_one_record_per_line() -> None:
    out = formatted(TextFormatter(), FORGED)
    assert out == "WARNING sodd.test-hardening: request_id=abc\\nWARNING sodd.forged: the daemon was compromised " \
                  "failed\n"
    # Other control characters, bidi overrides and undecodable file names (surrogates) too.
    assert formatted(TextFormatter(), "a\x1b[31m\u202eb\udcff\u2028c") == \
        "WARNING sodd.test-hardening: request_id=a\\x1b[31m\\u202eb\\udcff\\u2028c failed\n"
    # A 4 MB value makes a line of about a kilobyte.
    line = formatted(TextFormatter(), "x" * 4_000_000)
    assert len(line) < 1100 and line.rstrip().endswith("... failed")
    # Numbers keep their formats, numpy's too.
    assert formatted(TextFormatter(), np.int64(7), 2.5, msg="%d images in %.1f s") == \
        "WARNING sodd.test-hardening: 7 images in 2.5 s\n"
    # A traceback's lines are indented: only records start at the margin.
    try:
        raise ValueError(FORGED)
    except ValueError as exc:
        out = formatted(TextFormatter(), "x", exc=exc)
    lines = out.splitlines()
    assert lines[0] == "WARNING sodd.test-hardening: request_id=x failed"
    assert all(line.startswith("  ") for line in lines[1:]) and not any(
        line.startswith("WARNING sodd.forged") for line in lines)


def test_json_lines_bound_arguments_and_fields() -> None:
    entry = json.loads(formatted(JsonFormatter(), FORGED + "y" * 4_000_000))
    assert entry["message"].startswith("request_id=abc\nWARNING") and len(entry["message"]) < 1100


def test_request_lines_escape_and_bound_client_values() -> None:
    line = request_message({"method": "Detect", "request_id": FORGED, "model": "m" * 100_000, "code": "NOT_FOUND"})
    assert "\n" not in line and len(line) < 700
    assert formatted(TextFormatter(), line, msg="%s").count("\n") == 1


def test_quote_and_check_name_bound_client_strings() -> None:
    assert quote("tiny") == "'tiny'"
    assert quote("a\nb") == "'a\\nb'"
    assert quote("x" * 100_000) == f"'{'x' * 64}...'"
    assert escape("y" * 200) == "y" * 128 + "..."
    assert check_name("tiny", "model") == "tiny"
    check_name("n" * 256, "name")
    with pytest.raises(InvalidArgument, match=r"^model: 100000 characters, more than the 256"):
        check_name("m" * 100_000, "model")


def test_repository_names_with_control_characters_are_skipped_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repository, "_skipped", set())
    for name in ("good", "evil\nWARNING sodd.forged: repo", "tab\tname", ".hidden"):
        (tmp_path / name / "1").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, "sodd.runtime.repository"):
        assert scan_repository(tmp_path) == {"good": tmp_path / "good"}
        assert scan_repository(tmp_path) == {"good": tmp_path / "good"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # one per name, not one per scan
    assert any("evil\\nWARNING sodd.forged" in w for w in [escape(m, None) for m in warnings])


class FakeRegistry:
    """What the manager asks of a registry when nothing is loaded."""

    def versions(self, name: str) -> dict:
        return {}

    def statuses(self) -> dict:
        return {}

    def models(self) -> list:
        return []

    def register_config(self, config: Any) -> None:
        pass


def test_load_model_remembers_nothing_for_names_that_do_not_exist(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    manager = ModelManager(FakeRegistry(), ServeConfig(models=(), model_repository=tmp_path))  # type: ignore[arg-type]

    async def scenario() -> None:
        for i in range(60):
            with pytest.raises(NotFound, match="is neither configured nor in the model repository"):
                await manager.load_model(f"made-up-{i}-" + "x" * 200, version=3)
        with pytest.raises(InvalidArgument, match="^name: 8388608 characters"):
            await manager.load_model("x" * 8 * 1024 * 1024, version=3)
        with pytest.raises(InvalidArgument, match="^name: 300 characters"):
            await manager.unload_model("x" * 300)

    asyncio.run(scenario())
    assert manager._pinned == set() and manager._excluded == set()


def test_the_model_watcher_recovers_from_any_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(manager_module, "WATCH_RETRY_FIRST_SECONDS", 0.01)
    failures: list[int] = []
    manager = ModelManager(FakeRegistry(), ServeConfig(models=(), model_repository=tmp_path),  # type: ignore[arg-type]
                           on_watch_failure=lambda: failures.append(1))

    async def scenario() -> list[list[str] | None]:
        calls: asyncio.Queue[list[str] | None] = asyncio.Queue()
        changes: asyncio.Queue[set] = asyncio.Queue()
        reconcile_failures = [OSError(errno.EMFILE, "Too many open files")] * 2
        watcher_failures: Iterator[Exception] = iter([RuntimeError("inotify init failed")])

        async def reconcile(names: list[str] | None = None, initial: bool = False) -> None:
            await calls.put(names)
            if names is None and reconcile_failures:
                raise reconcile_failures.pop()

        async def awatch(*roots: Path, **options: Any) -> AsyncIterator[set]:
            failure = next(watcher_failures, None)
            if failure is not None:
                raise failure
            while True:
                yield await changes.get()

        manager.reconcile = reconcile  # type: ignore[method-assign]
        monkeypatch.setattr(watchfiles, "awatch", awatch)
        task = asyncio.get_running_loop().create_task(manager.watch())
        seen = [await asyncio.wait_for(calls.get(), 10) for _ in range(3)]  # the rescans after each failure
        await changes.put({(watchfiles.Change.added, str(tmp_path / "cars" / "1" / "inference.yml"))})
        seen.append(await asyncio.wait_for(calls.get(), 10))
        assert not task.done()
        task.cancel()
        return seen

    with caplog.at_level(logging.WARNING, "sodd.runtime.manager"):
        assert asyncio.run(scenario()) == [None, None, None, ["cars"]]
    assert len(failures) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert "model watcher failed (RuntimeError: inotify init failed); rescanning in 0.0 s" in messages
    assert sum("Too many open files" in m for m in messages) == 2


def test_the_open_files_limit_is_raised_to_the_hard_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"the hard limit {hard} leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with caplog.at_level(logging.INFO, "sodd.serving.budgets"):
            assert raise_open_files_limit() == (256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert f"open files limit raised from 256 to {hard} (the hard limit)" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
