"""One declaration per setting: the docs table, the example file, the `sodd serve` flags and the
reload behaviour all follow sodd.config.schema, and fail here when they drift from it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sodd.cli import build_parser
from sodd.commands import serve as serve_command
from sodd.commands.serve import build_config
from sodd.config.addresses import join_host_port, split_host_port
from sodd.config.docs import DOCS_FILE, main, render
from sodd.config.flags import flagged
from sodd.config.schema import REPOSITORY_MODELS, ModelConfig, ServeConfig, reloaded_settings, settings
from sodd.serving.settings import LIVE, Settings
from tests.conftest import REPO

EXAMPLE = REPO / "systemd" / "sodd.toml.example"


def serve_args(*argv: str):
    return build_parser("serve").parse_args(["serve", *argv])


def test_the_docs_table_is_generated_from_the_schema(tmp_path: Path) -> None:
    assert DOCS_FILE.read_text(encoding="utf-8") == render(), "run: python -m sodd.config.docs"
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("| `max_pending` |", "| `max_pending_images` |"))
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0 and main(["--check", "--output", str(stale)]) == 0


def _example_sections() -> dict[str, dict[str, tuple[str, bool]]]:
    """The example's keys per table: {table: {key: (value text, commented out)}}."""
    sections: dict[str, dict[str, tuple[str, bool]]] = {"": {}}
    current = ""
    for line in EXAMPLE.read_text().splitlines():
        if table := re.match(r"^\[([\w.]+)\]", line):
            current = "models" if table[1].startswith("models.") else table[1]
            sections.setdefault(current, {})
        elif key := re.match(r"^(#\s?)?(\w+) = (.*)$", line):
            sections[current][key[2]] = (key[3], key[1] is not None)
    return sections


def test_the_example_shows_every_setting_with_its_default() -> None:
    sections = _example_sections()
    tables = {"": settings(ServeConfig), "repository_defaults": settings(ModelConfig),
              "models": settings(ModelConfig)}
    for table, declared in tables.items():
        shown = sections[table]
        for s in declared:
            if s.name in ("name", "models", "repository_defaults") or (table == "repository_defaults"
                                                                       and s.name == "path"):
                continue
            assert s.name in shown, f"systemd/sodd.toml.example [{table}] does not show {s.name}"
            value, commented = shown[s.name]
            # Unset settings are shown commented out, with an example value; the others with their default.
            assert commented == (s.default is None), f"[{table}] {s.name}"
            if s.default is not None and s.name != "path":
                assert value == s.shown_default(), f"[{table}] {s.name}: {value} is not the default"
        known = {s.name for s in declared}
        assert not set(shown) - known, f"[{table}] shows keys the schema does not have: {set(shown) - known}"


def test_every_flag_takes_its_help_and_default_from_the_schema() -> None:
    subparsers = argparse.ArgumentParser().add_subparsers()
    serve_command.register(subparsers)
    parser = subparsers.choices["serve"]
    help_text = re.sub(r"\s+", "", parser.format_help())  # argparse wraps lines, also at hyphens
    for s in flagged():
        assert s.flag in help_text
        assert re.sub(r"\s+", "", s.help) in help_text, s.name
    assert "--max-pendingMAX_PENDING" in help_text and "(default64)" in help_text
    assert "inMiB;default64" in help_text and "inms;everymodel;default0" in help_text
    # No flag given: the schema's defaults.
    assert build_config(serve_args()) == ServeConfig(models=build_config(serve_args()).models)


def test_flags_convert_units_and_reach_every_model(tmp_path: Path) -> None:
    config = build_config(serve_args(
        "--model", f"a={tmp_path}", "--model", f"b={tmp_path}", "--max-message-mb", "2", "--max-queue-delay-ms", "5",
        "--no-combine-requests", "--hp", "b", "--hp", REPOSITORY_MODELS, "--device", "a=cpu?threads=2",
        "--version-policy", "*=latest:2", "--poll-files", "--threads", "3", "--listen", "",
        "--unix-socket", str(tmp_path / "s.sock")))
    assert config.max_message_bytes == 2 * 1024 * 1024 and config.poll_files and config.cpu_threads == 3
    a, b = config.models
    assert a.max_queue_delay_seconds == b.max_queue_delay_seconds == 0.005
    assert a.combine_requests is False and (a.high_performance, b.high_performance) == (False, True)
    assert a.devices[0].options == {"threads": "2"} and str(b.devices[0].name) == "cpu"
    defaults = config.repository_defaults
    assert defaults.name == REPOSITORY_MODELS and defaults.high_performance
    assert str(defaults.version_policy) == "latest:2"
    assert config.unix_socket == tmp_path / "s.sock" and config.listen == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--threshold", "default=2"], "models.default.threshold: input should be less than or equal to 1"),
    (["--threshold", "default=high"], "--threshold: 'high' is not a number"),
    (["--max-pending", "0"], "max_pending: input should be greater than or equal to 1"),
    (["--listen", "nowhere"], "listen: 'nowhere' is not HOST:PORT"),
])
def test_bad_flags_name_the_setting(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_config(serve_args(*argv))


def test_the_repository_models_have_one_name_everywhere() -> None:
    assert ServeConfig(models=(), model_repository=Path("/m")).repository_defaults.name == REPOSITORY_MODELS
    config = build_config(serve_args("--model-repository", "/srv/models", "--threshold", f"{REPOSITORY_MODELS}=0.3"))
    assert config.repository_defaults.name == REPOSITORY_MODELS and config.repository_defaults.threshold == 0.3


def test_reload_applies_exactly_the_settings_declared_so() -> None:
    assert LIVE == reloaded_settings(ServeConfig) == {
        "tls_cert", "tls_key", "tls_client_ca", "tokens_file", "allow_remote_management", "drain_timeout_seconds",
        "drain_grace_seconds", "models", "model_repository", "repository_defaults"}


def test_the_access_check_is_built_complete() -> None:
    settings_ = Settings(ServeConfig(models=(), model_repository=Path("/m"), allow_remote_management=True), None)
    access = settings_.access(lambda: "visdrone", stream_frames_checked=True)
    assert access.default_model() == "visdrone" and access.stream_frames_checked and access.allow_remote_management
    assert access.tokens is None and settings_.access(lambda: None, False) is access


def test_host_port_has_one_parser() -> None:
    assert split_host_port("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert split_host_port("[::1]:0") == ("::1", 0) and split_host_port(":9464") == ("", 9464)
    assert join_host_port("::1", 50051) == "[::1]:50051" and join_host_port("0.0.0.0", 1) == "0.0.0.0:1"
    for bad in ("9464", "host:", "host:port", "host:70000", "[::1:5"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            split_host_port(bad)


def test_serve_help_imports_no_paddle() -> None:
    probe = ("import sys; from sodd.cli import build_parser; build_parser('serve').parse_args(['serve']); "
             "print(sorted(m for m in ('paddle', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_reload_updates_the_access_check_built_before_it() -> None:
    import asyncio
    import dataclasses

    start = ServeConfig(models=(), model_repository=Path("/m"))
    settings_ = Settings(start, lambda: dataclasses.replace(start, allow_remote_management=True, max_streams=3))
    access = settings_.access(lambda: None, stream_frames_checked=False)
    asyncio.run(settings_.reload())
    assert access.allow_remote_management and settings_.config.max_streams == 3
