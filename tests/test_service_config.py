"""The configuration file: every option documented with its default, errors that name the key,
flags over the file, and a start that stops on a bad file."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sodd.cli import build_parser
from sodd.commands.serve import build_config
from sodd.config.schema import ModelConfig, ServeConfig
from sodd.config.toml_file import ConfigError, make_config, parse_config, read_config
from tests.conftest import REPO

EXAMPLE = REPO / "systemd" / "sodd.toml.example"


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def load(text: str, base: Path = Path("/etc/sodd")) -> ServeConfig:
    return make_config(parse_config(text, base))


def test_example_names_every_option() -> None:
    text = EXAMPLE.read_text()
    named = set(re.findall(r"^#?\s*(\w+)\s*=", text, flags=re.M)) | set(re.findall(r"^\[(\w+)", text, flags=re.M))
    fields = {f.name for cls in (ServeConfig, ModelConfig) for f in dataclasses.fields(cls)} - {"name"}
    assert not fields - named, f"systemd/sodd.toml.example does not document {sorted(fields - named)}"


def test_example_values_are_the_defaults_and_every_commented_option_is_valid() -> None:
    config = make_config(read_config(EXAMPLE))
    defaults = ServeConfig(models=config.models)
    for f in dataclasses.fields(ServeConfig):
        if f.name != "models":
            assert getattr(config, f.name) == getattr(defaults, f.name), f.name
    model = config.models[0]
    assert model == ModelConfig(name=model.name, path=model.path)
    assert config.repository_defaults == dataclasses.replace(defaults.repository_defaults)
    # Uncommenting every example line still gives a valid configuration.
    everything = re.sub(r"^# (\w+ = .*)$", r"\1", EXAMPLE.read_text(), flags=re.M)
    full = load(everything)
    assert full.tls_client_ca == Path("/etc/sodd/tls/clients-ca.crt") and full.unix_socket_group == "sodd"


@pytest.mark.parametrize(("text", "message"), [
    ('[models.visdrone]\npath = "m"\nthreshold = 1.5',
     "models.visdrone.threshold: input should be less than or equal to 1, got 1.5"),
    ('listn = "0.0.0.0:1"', "listn: unknown key; did you mean 'listen'?"),
    ('[models.visdrone]\npath = "m"\ncolour = "red"', "models.visdrone.colour: unknown key"),
    ("max_pending = 0", "max_pending: input should be greater than or equal to 1, got 0"),
    ('max_pending = "8"', "max_pending: input should be a valid integer, got '8'"),
    ("poll_files = 1", "poll_files: input should be a valid boolean, got 1"),
    ("unix_socket_mode = 660", "unix_socket_mode: 660 is not a file mode; write it in octal"),
    ('listen = "nowhere"', "listen: 'nowhere' is not HOST:PORT"),
    ('[models.visdrone]\ndevices = "cpu"', "models.visdrone.path: required key is missing"),
    ('[models.visdrone]\npath = "m"\ndevices = "cpu:x"', "models.visdrone.devices: device 'cpu:x' is malformed"),
    ('[repository_defaults]\nversion_policy = "newest"', "repository_defaults.version_policy: version policy"),
    ("[repository_defaults]\nmax_batch_size = 0",
     "repository_defaults.max_batch_size: input should be greater than or equal to 1"),
    ("drain_timeout_seconds = -1", "drain_timeout_seconds: input should be greater than or equal to 0, got -1"),
    ("models = 3", "models: expected [models.NAME] tables"),
    ('tls_cert = "server.crt"', "tls_cert and tls_key go together"),
    ("listen = [", "config: "),
    ('[models.visdrone]\npath = "m"\nname = "other"', "models.visdrone.name: unknown key"),
    ('[repository_defaults]\nname = "other"', "repository_defaults.name: unknown key"),
    ('listen = ":50051"', "listen: ':50051' is not HOST:PORT: give the host"),
    ('metrics_listen = "9464"', "metrics_listen: '9464' is not HOST:PORT"),
    ("max_image_megapixels = inf", "max_image_megapixels: input should be a finite number"),
    ('log_format = "xml"', "log_format: input should be 'text' or 'json'"),
    ('[models.visdrone]\npath = "m"\nslicing = { auto = true, size = 3 }',
     "models.visdrone.slicing: size: unknown key"),
])
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load('model_repository = "/srv/models"\n' + text)
    assert message in str(info.value)


def test_paths_are_relative_to_the_file_and_table_order_picks_the_default(tmp_path: Path) -> None:
    config = load('tls_cert = "tls/s.crt"\ntls_key = "/abs/s.key"\n'
                  '[models.b]\npath = "models/b"\n[models.a]\npath = "models/a"\nthreshold = 0.25', tmp_path)
    assert config.tls_cert == tmp_path / "tls/s.crt" and config.tls_key == Path("/abs/s.key")
    assert [m.name for m in config.models] == ["b", "a"]
    assert config.models[1].threshold == 0.25 and config.models[1].path == tmp_path / "models/a"


def test_flags_override_the_file(tmp_path: Path) -> None:
    file = tmp_path / "sodd.toml"
    file.write_text('listen = "0.0.0.0:7000"\nmax_pending = 5\ndrain_timeout_seconds = 3\n'
                    '[models.a]\npath = "a"\nthreshold = 0.4\nmax_batch_size = 2\n[models.b]\npath = "b"\n')
    from_file = build_config(serve_args("--config", str(file)))
    assert (from_file.listen, from_file.max_pending, from_file.drain_timeout_seconds) == ("0.0.0.0:7000", 5, 3.0)
    assert [(m.name, m.threshold, m.max_batch_size) for m in from_file.models] == [("a", 0.4, 2), ("b", None, 8)]
    flags = build_config(serve_args("--config", str(file), "--listen", "127.0.0.1:7001", "--threshold", "b=0.6",
                                    "--max-batch-size", "4", "--drain-timeout", "1"))
    assert (flags.listen, flags.max_pending, flags.drain_timeout_seconds) == ("127.0.0.1:7001", 5, 1.0)
    assert [(m.name, m.threshold, m.max_batch_size) for m in flags.models] == [("a", 0.4, 4), ("b", 0.6, 4)]
    replaced = build_config(serve_args("--config", str(file), "--model", f"c={tmp_path}"))
    assert [m.name for m in replaced.models] == ["c"]
    # A reload rebuilds from the same flags: a model the file no longer has is an error, not an exit.
    with pytest.raises(ConfigError, match="name 'a' is not a served model"):
        build_config(serve_args("--config", str(file), "--model", f"c={tmp_path}", "--threshold", "a=0.5"))


def test_a_bad_file_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    file = tmp_path / "sodd.toml"
    file.write_text('[models.visdrone]\npath = "/srv/sodd/models/visdrone"\nthreshold = 1.5\n')
    result = subprocess.run([sys.executable, "-m", "sodd.cli", "serve", "--config", str(file)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "models.visdrone.threshold: input should be less than or equal to 1, got 1.5" in result.stderr
    missing = subprocess.run([sys.executable, "-m", "sodd.cli", "serve", "--config", str(tmp_path / "absent.toml")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "cannot read the configuration file" in missing.stderr
