"""SIGHUP applies the configuration file's models: added ones load, removed ones unload after
their requests, changed ones reload beside the serving version."""

from __future__ import annotations

import signal
from pathlib import Path

from sodd_client import Client

from tests.conftest import start_daemon
from tests.service_helpers import wait_until


def write_config(path: Path, models: dict[str, tuple[Path, float]]) -> None:
    tables = "".join(f'[models.{name}]\npath = "{p}"\nthreshold = {t}\n\n' for name, (p, t) in models.items())
    path.write_text(tables)


def wait_for(predicate, timeout: float = 60.0) -> None:
    wait_until(predicate, timeout, interval=0.1)


def test_sighup_follows_the_models_in_the_file(tiny_model_dirs: dict[str, Path], visdrone_image: Path,
                                               tmp_path: Path) -> None:
    config = tmp_path / "sodd.toml"
    write_config(config, {"a": (tiny_model_dirs["pir"], 0.5)})
    daemon = start_daemon(["--config", str(config)], tmp_path / "d.log")
    try:
        with Client(daemon.address) as c:
            assert [m.name for m in c.list_models()] == ["a"]
            write_config(config, {"a": (tiny_model_dirs["pir"], 0.25), "b": (tiny_model_dirs["legacy"], 0.5)})
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: sorted(m.name for m in c.list_models() if m.state == 2) == ["a", "b"])
            wait_for(lambda: abs(c.get_model("a").default_threshold - 0.25) < 1e-6)
            low = c.detect(visdrone_image.read_bytes(), "a")
            assert low.boxes and all(b.score > 0.25 for b in low.boxes)
            write_config(config, {"b": (tiny_model_dirs["legacy"], 0.5)})
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: [m.name for m in c.list_models() if m.state == 2] == ["b"])
            assert c.detect(visdrone_image.read_bytes(), "b").model == "b"
    finally:
        daemon.stop()
