"""Paddle Lite (device `arm`): the path for ARM edge boards, also runnable on x86 with target x86.

Lite runs only its own `.nb` format, converted from a legacy `inference.pdmodel` by `Opt`. The
conversion result is cached by content (see hw_plugins.artifact_cache), so only the first load of
a model pays for it. A directory may instead carry a ready program, used as is:
`inference.<target>.nb` (what `sodd lite` writes on the build machine) or `inference.nb`.

PyPI's paddlelite wheels are x86_64 (CPython <= 3.10), macOS and Windows only. An ARM board gets
Paddle Lite's Python runtime from Paddle Lite's own ARM Linux builds; such a runtime may lack the
optimiser, so boards usually load a program converted on the build machine (`sodd lite DIR`).
Conversions drop the programs' call stacks first and zero the uninitialised bytes `Opt` leaves
after its version string, so one model converts to the same bytes on every machine.

Lite 2.13 crashes the process instead of raising on some programs and on a `.nb` built for
another target, so conversion and a first trial run of every new `.nb` happen in a child process.
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from hw_plugins.artifact_cache import content_key, default_cache_root, publish, staging_dir
from hw_plugins.tool_process import run_tool
from sodd.errors import FailedPrecondition
from sodd.model.modeldir import ModelDir
from sodd.model.pipeline import has_detector_outputs
from sodd.plugins.options import Option, OptionSchema
from sodd.plugins.protocol import DeviceInfo

log = logging.getLogger(__name__)

READY_NB = "inference.nb"  # a converted program shipped inside the model directory
TARGET_NB = "inference.{target}.nb"  # the same for one target, as `sodd lite` writes it
TARGETS = ("arm", "x86")
POWER_MODES = {"high": "LITE_POWER_HIGH", "low": "LITE_POWER_LOW", "full": "LITE_POWER_FULL",
               "no_bind": "LITE_POWER_NO_BIND", "rand_high": "LITE_POWER_RAND_HIGH",
               "rand_low": "LITE_POWER_RAND_LOW"}
OPTIONS = OptionSchema(
    "arm",
    # No default target: it is this machine's (machine_target), decided at load.
    Option("target", str, None, "the program's target: arm, or x86 on x86 machines", TARGETS),
    Option("cache_dir", Path, None, "where converted programs are kept (default .../sodd/lite)"),
    Option("threads", int, None, "Lite threads (ARM builds of Lite only)"),
    Option("power_mode", str, None, "which cores Lite binds to (ARM builds of Lite only)", tuple(POWER_MODES)),
    Option("batch", str, "native", "native: Lite runs the whole batch; one: one image at a time", ("native", "one")),
)
# Conversions done outside an unusable cache live in such a temporary directory until loaded.
PRIVATE_PREFIX = "sodd-lite-uncached-"
CONVERT_TIMEOUT_S = 900
_TOOL = f"{__name__}.tool"
# Where a board gets what PyPI does not have.
LITE_SOURCE_HINT = (
    "PyPI's paddlelite wheels are built for x86_64 (CPython <= 3.10), macOS and Windows only; on an ARM "
    "board install the paddlelite wheel for this Python from Paddle Lite's ARM Linux release builds "
    "(https://github.com/PaddlePaddle/Paddle-Lite/releases, inference_lite_lib.armlinux.armv8 with the "
    "Python API), or build one there with Paddle-Lite's lite/tools/build_linux.sh --with_python=ON, then "
    "pip install it into this environment"
)
NO_OPT_HINT = (
    "this Paddle Lite runtime has no optimiser (lite.Opt, absent from light-API builds) to convert the "
    "model; convert it on the build machine with `sodd lite MODEL_DIR --target {target}` and copy "
    "inference.{target}.nb into the model directory"
)
PIR_ONLY_HINT = (
    "Paddle Lite reads only legacy programs (inference.pdmodel), and this directory holds only a PIR "
    "program (inference.json). Re-export it with `sodd export` (it writes both programs), or export with "
    "FLAGS_enable_pir_api=0 set before importing paddle (paddle <= 3.1.1; later releases cannot write "
    f"legacy programs containing matmul), or put a converted {READY_NB} in the directory"
)


def machine_target() -> str | None:
    """The Lite target whose kernels this machine can execute."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86"
    if machine in ("aarch64", "arm64") or machine.startswith("armv"):
        return "arm"
    return None


def unavailable_reason(exc: BaseException) -> str:
    """Why Lite's Python runtime cannot be imported here, and where this machine gets it."""
    machine, version = platform.machine(), f"{sys.version_info.major}.{sys.version_info.minor}"
    missing = f"Paddle Lite's Python runtime (module paddlelite.lite) is not importable ({type(exc).__name__}: {exc})"
    if machine_target() == "x86":
        if sys.version_info >= (3, 11):
            return (f"{missing}: PyPI's paddlelite 2.13rc0 wheels for x86_64 stop at CPython 3.10 and this is "
                    f"{version}; run sodd on Python 3.10 (make setup picks it) to get it")
        return f"{missing}: pip install 'paddlelite==2.13rc0' (PyPI, x86_64 wheels for CPython <= 3.10)"
    if machine_target() == "arm":
        return f"{missing} on this {machine} machine (Python {version}): {LITE_SOURCE_HINT}"
    return f"{missing}; Paddle Lite has no target for a {machine} machine"


# The naive-buffer header: a uint16 meta version, then the Lite version as a 16-byte C string.
_NB_VERSION_START, _NB_VERSION_END = 2, 18


def normalise_nb(path: Path) -> None:
    """Zero what follows the NUL of the `.nb` header's 16-byte version field: Opt leaves stack bytes
    there, which made every conversion of the same program differ (and leaked an address)."""
    with open(path, "r+b") as f:
        head = bytearray(f.read(_NB_VERSION_END))
        end = head.find(0, _NB_VERSION_START)
        if len(head) < _NB_VERSION_END or end < 0 or not head[_NB_VERSION_START:end].startswith(b"v"):
            return  # not the layout this was written for; leave it as Opt wrote it
        f.seek(end)
        f.write(bytes(_NB_VERSION_END - end))


def convert_program(model_file: Path, params_file: Path, target: str, out_nb: Path,
                    timeout: float = CONVERT_TIMEOUT_S) -> float:
    """Convert a legacy program to a `.nb` for `target` with Opt in a child process; seconds taken.

    The program is first rewritten without call stacks beside `out_nb` (which must end in `.nb`).
    """
    from sodd.model.program import strip_program

    out_nb = Path(out_nb)
    stripped = out_nb.with_name(out_nb.stem + ".source.pdmodel")
    data, _ = strip_program(Path(model_file).read_bytes())
    stripped.write_bytes(data)
    try:
        seconds = _run_tool(["convert", str(stripped), str(params_file), target, str(out_nb.with_suffix(""))],
                            f"conversion of {model_file} for target {target}", timeout)
    finally:
        stripped.unlink(missing_ok=True)
    normalise_nb(out_nb)
    return seconds


def lite_version() -> str:
    try:
        return metadata.version("paddlelite")
    except metadata.PackageNotFoundError:
        return "unknown"  # a wheel built on the device may carry no metadata


class LitePredictor:
    """A `.nb` program under MobileConfig, inputs fed by name."""

    def __init__(self, nb_file: Path, threads: int | None, power_mode: str | None, per_image: bool,
                 notes: list[str]) -> None:
        from paddlelite import lite

        config = lite.MobileConfig()
        config.set_model_from_file(str(nb_file))
        # The x86 wheel's MobileConfig has neither setter; ARM builds have both.
        for option, setter, value in (("threads", "set_threads", threads),
                                      ("power_mode", "set_power_mode",
                                       getattr(lite.PowerMode, POWER_MODES[power_mode]) if power_mode else None)):
            if value is None:
                continue
            if hasattr(config, setter):
                getattr(config, setter)(value)
            else:
                notes.append(f"{option} ignored: this Paddle Lite build cannot set it")
        self._predictor = lite.create_paddle_predictor(config)
        self._input_names = tuple(self._predictor.get_input_names())
        self._output_names = tuple(self._predictor.get_output_names())
        self._settings = (nb_file, threads, power_mode)
        self._per_image = per_image
        self._notes = notes

    def clone(self) -> LitePredictor:
        """Another instance for another engine thread: Lite cannot share weights, so it reloads the file."""
        nb_file, threads, power_mode = self._settings
        return LitePredictor(nb_file, threads, power_mode, self._per_image, [])

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    @property
    def notes(self) -> str:
        return "; ".join(self._notes)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        batch = inputs[self._input_names[0]].shape[0]
        if self._per_image or batch == 1:
            return self._run_each(inputs, batch)
        outputs = self._run_once(inputs)
        if _counts_match(outputs, batch):
            return outputs
        # A Lite build that mishandles batches: remember it and run images one at a time.
        self._per_image = True
        self._notes.append("batches run one image at a time: this Paddle Lite build returned "
                           f"counts {outputs[1].tolist() if len(outputs) > 1 else None} for a batch of {batch}")
        log.warning("%s", self._notes[-1])
        return self._run_each(inputs, batch)

    def _run_once(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name in self._input_names:
            self._predictor.get_input_by_name(name).from_numpy(np.ascontiguousarray(inputs[name]))
        self._predictor.run()
        return _no_boxes_as_empty([np.array(self._predictor.get_output_by_name(n).numpy(), copy=True)
                                   for n in self._output_names])

    def _run_each(self, inputs: Mapping[str, np.ndarray], batch: int) -> list[np.ndarray]:
        """Every output concatenated along its first axis: box rows, then per-image counts."""
        per_image = [self._run_once({n: inputs[n][i:i + 1] for n in self._input_names}) for i in range(batch)]
        return [np.concatenate([outs[k] for outs in per_image]) for k in range(len(self._output_names))]

    def close(self) -> None:
        self._predictor = None


def _counts_match(outputs: list[np.ndarray], batch: int) -> bool:
    if not has_detector_outputs(outputs):
        return True  # not a detector's signature; leave the judgement to the caller
    counts = outputs[1]
    return counts.shape == (batch,) and int(counts.sum()) == outputs[0].shape[0]


def _no_boxes_as_empty(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Lite's NMS may write one placeholder row when nothing is kept; the daemon expects [0, 6]."""
    if has_detector_outputs(outputs) and outputs[1].size and int(outputs[1].sum()) == 0 and outputs[0].shape[0] != 0:
        outputs[0] = np.zeros((0, 6), dtype=outputs[0].dtype)
    return outputs


def _run_tool(args: list[str], what: str, timeout: float = CONVERT_TIMEOUT_S) -> float:
    def crashed(signal_name: str, tail: str) -> str:
        return (f"Paddle Lite crashed ({signal_name}) during {what}; Lite 2.13 does so on programs with "
                f"ops it cannot handle (e.g. flatten_contiguous_range) and on a .nb built for "
                f"another target. Output: {tail}")

    return run_tool(_TOOL, args, f"Paddle Lite {what}", timeout, crashed)


class ArmLitePlugin:
    name = "arm"
    device_types = ("arm",)

    def probe(self) -> list[DeviceInfo]:
        facts = {"machine": platform.machine(), "arch": platform.machine()}
        try:
            from paddlelite import lite
        except Exception as exc:  # noqa: BLE001 - any import failure makes the device unavailable
            return [DeviceInfo("arm", False, unavailable_reason(exc), facts)]
        facts["paddlelite"] = lite_version()
        target = machine_target()
        if target is None:
            return [DeviceInfo("arm", False, f"Paddle Lite has no target for a {platform.machine()} machine", facts)]
        facts["target"] = target
        facts["programs"] = (f"inference.{target}.nb or inference.nb, or converts inference.pdmodel"
                             if hasattr(lite, "Opt") else
                             f"inference.{target}.nb or inference.nb only (no optimiser in this runtime)")
        if int(np.__version__.split(".")[0]) >= 2:
            reason = f"Paddle Lite 2.13 returns garbage tensors with numpy {np.__version__}; install numpy<2"
            return [DeviceInfo("arm", False, reason, facts)]
        return [DeviceInfo("arm", True, "", facts)]

    def load(self, model: ModelDir, device: str, options: Mapping[str, str]) -> LitePredictor:
        parsed = OPTIONS.parse(device, options)
        runnable = machine_target()
        target = parsed["target"] or runnable or "arm"
        if target != runnable:
            raise FailedPrecondition(f"a Paddle Lite program for target {target} cannot run on this "
                                     f"{platform.machine()} machine; use target={runnable}")
        threads, power_mode = parsed["threads"], parsed["power_mode"]
        batch = parsed["batch"]
        cache_dir = parsed["cache_dir"] or default_cache_root() / "lite"

        nb_file, notes = self._program(model, target, cache_dir)
        try:
            return LitePredictor(nb_file, threads, power_mode, batch == "one", notes)
        finally:
            if nb_file.parent.name.startswith(PRIVATE_PREFIX):  # loaded into memory; not cached
                shutil.rmtree(nb_file.parent, ignore_errors=True)

    def _program(self, model: ModelDir, target: str, cache_dir: Path) -> tuple[Path, list[str]]:
        """The `.nb` to run: the directory's own, a cached conversion, or a fresh one."""
        h, w = model.input_size or (640, 640)
        for ready in (model.path / TARGET_NB.format(target=target), model.path / READY_NB):
            if ready.is_file():
                _run_tool(["trial", str(ready), str(h), str(w)], f"a trial run of {ready}")
                return ready, [f"Paddle Lite program {ready} from the model directory"]
        if model.legacy_model_file is None:
            raise FailedPrecondition(f"model {model.path} cannot run on Paddle Lite: {PIR_ONLY_HINT}")
        from paddlelite import lite

        if not hasattr(lite, "Opt"):
            raise FailedPrecondition(f"model {model.path}: {NO_OPT_HINT.format(target=target)}")
        key = content_key([model.legacy_model_file, model.params_file],
                          {"target": target, "paddlelite": lite_version(), "program": "no-callstack-v1"})
        nb_file = cache_dir / f"{target}-{key[:32]}.nb"
        if nb_file.is_file():
            log.info("model %s: Paddle Lite program from the cache: %s", model.path, nb_file)
            return nb_file, [f"Paddle Lite {target} program from the cache ({nb_file})"]
        try:
            with staging_dir(cache_dir) as staging:
                staged, seconds = self._convert(model, target, staging, h, w)
                publish(staged, nb_file)
        except OSError as exc:
            # An unwritable or full cache must not stop the model: convert privately, uncached.
            log.warning("model %s: Paddle Lite cache %s is unusable (%s); converting without caching",
                        model.path, cache_dir, exc)
            private = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
            staged, seconds = self._convert(model, target, private, h, w)
            return staged, [f"Paddle Lite {target} program converted in {seconds:.1f} s; not cached: "
                            f"the cache {cache_dir} is unusable ({exc.strerror or exc})"]
        log.info("model %s: converted to a Paddle Lite %s program in %.1f s, cached as %s",
                 model.path, target, seconds, nb_file)
        return nb_file, [f"Paddle Lite {target} program converted in {seconds:.1f} s, cached ({nb_file})"]

    @staticmethod
    def _convert(model: ModelDir, target: str, directory: Path, h: int, w: int) -> tuple[Path, float]:
        staged = directory / "model.nb"
        seconds = convert_program(model.legacy_model_file, model.params_file, target, staged)
        _run_tool(["trial", str(staged), str(h), str(w)], f"a trial run of the program converted from {model.path}")
        return staged, seconds

    def close(self) -> None:
        pass

