"""The served model versions and the leases requests hold on them.

A request leases the version it runs on; a swap publishes the new version first and then retires
the old one, which closes only when its last lease is released. So a swap never fails a request
and never mutates a version in use. Loading happens beside the serving versions
(`sodd.runtime.loading`); a version that fails any step is never published. Changes of state are
told to listeners (`sodd.runtime.events`).

The registry owns what its versions run on: the plugins it is given and the engines' worker
threads. `close` closes the serving versions, waits for retired ones already closing, then ends
the worker threads and closes the plugins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sodd.config.schema import ModelConfig
from sodd.errors import NotFound
from sodd.observability.reports import DetectionObserver
from sodd.plugins.discovery import PluginProblem
from sodd.plugins.protocol import HardwarePlugin
from sodd.runtime.events import ModelEvent, ModelEvents, ModelState
from sodd.runtime.heap import release_freed_memory
from sodd.runtime.loading import DEFAULT_MAX_INPUT_PIXELS, ModelLoader, ServedModel
from sodd.runtime.worker_threads import WorkerThreads

log = logging.getLogger(__name__)
REPLACED_REASON = "replaced by new files of the same version"


@dataclass(frozen=True)
class VersionStatus:
    """What GetModel/ListModels say of a version that is not (or not only) serving."""

    state: ModelState
    reason: str = ""
    path: Path | None = None


class ModelRegistry:
    def __init__(self, plugins: dict[str, HardwarePlugin], *, max_pending: int,
                 cpu_threads: int | None = None, plugin_problems: list[PluginProblem] | None = None,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS, observer: DetectionObserver | None = None) -> None:
        self._plugins = plugins
        self.plugin_problems = list(plugin_problems or [])
        self._workers = WorkerThreads("infer")
        self._loader = ModelLoader(plugins, max_pending=max_pending, workers=self._workers, cpu_threads=cpu_threads,
                                   max_input_pixels=max_input_pixels, observer=observer)
        self._events = ModelEvents()
        self._lock = threading.Lock()
        self._serving: dict[str, dict[int, ServedModel]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._unloading: set[threading.Thread] = set()
        self._closed = False
        self.default_name: str | None = None

    @property
    def plugins(self) -> dict[str, HardwarePlugin]:
        return dict(self._plugins)

    # -- events ----------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        self._events.add_listener(listener)

    def remove_listener(self, listener: Callable[[ModelEvent], None]) -> None:
        self._events.remove_listener(listener)

    def set_status(self, name: str, version: int, state: ModelState, reason: str = "", path: Path | None = None,
                   device: str = "") -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = VersionStatus(state, reason, path)
        self._events.emit(ModelEvent(name, version, state, reason, device))

    def forget_status(self, name: str, version: int) -> None:
        with self._lock:
            self._status.get(name, {}).pop(version, None)

    # -- loading and swapping --------------------------------------------------------------

    def register_config(self, config: ModelConfig) -> None:
        """A model name the daemon serves; the first one registered is the default model."""
        with self._lock:
            if self.default_name is None:
                self.default_name = config.name

    def load_version(self, config: ModelConfig, version: int, path: Path, fingerprint: tuple = ()) -> ServedModel:
        """Load, validate and warm up one version beside whatever serves now. Blocking."""
        self.register_config(config)
        self.set_status(config.name, version, ModelState.LOADING, path=path)
        try:
            return self._loader.load(config, version, path, fingerprint)
        except Exception as exc:
            self.set_status(config.name, version, ModelState.FAILED, str(getattr(exc, "message", exc)), path)
            raise

    def publish(self, served: ServedModel) -> ServedModel | None:
        """Make `served` answer requests; returns the version object it replaces, if any."""
        with self._lock:
            versions = self._serving.setdefault(served.name, {})
            replaced = versions.get(served.version)
            versions[served.version] = served
            self._status.setdefault(served.name, {})[served.version] = VersionStatus(
                ModelState.READY, served.notes, served.model_dir.path)
        self._events.emit(ModelEvent(served.name, served.version, ModelState.READY, served.notes, served.device))
        if replaced is not None:
            self._retire(replaced, keep_status=True)
        return replaced

    def unpublish(self, name: str, version: int) -> None:
        """Stop routing requests to a version; it closes once its in-flight requests finish."""
        with self._lock:
            served = self._serving.get(name, {}).pop(version, None)
        if served is not None:
            self._retire(served, keep_status=False)

    def _retire(self, served: ServedModel, keep_status: bool) -> None:
        reason = REPLACED_REASON if keep_status else ""
        with self._lock:
            served.draining = True
            served.replaced = keep_status
            idle = served.leases == 0
            if not keep_status:
                self._status.setdefault(served.name, {})[served.version] = VersionStatus(
                    ModelState.DRAINING, "", served.model_dir.path)
        self._events.emit(ModelEvent(served.name, served.version, ModelState.DRAINING, reason, served.device))
        if idle:
            self._close(served)

    def _close(self, served: ServedModel) -> None:
        """Close a retired version after its last lease: its runner, and with it its predictors."""
        reason = REPLACED_REASON if served.replaced else ""

        def close() -> None:
            try:
                served.runner.close()
                release_freed_memory()
                with self._lock:
                    current = self._status.get(served.name, {}).get(served.version)
                    if not served.replaced and current is not None and current.state is ModelState.DRAINING:
                        self._status[served.name][served.version] = VersionStatus(ModelState.UNLOADED)
                self._events.emit(ModelEvent(served.name, served.version, ModelState.UNLOADED, reason, served.device))
            finally:
                with self._lock:
                    self._unloading.discard(threading.current_thread())

        # Closing joins the predictor's thread; never do that on the event loop.
        thread = threading.Thread(target=close, name=f"unload-{served.name}-{served.version}", daemon=True)
        with self._lock:
            self._unloading.add(thread)
        thread.start()

    # -- requests --------------------------------------------------------------------------

    def _resolve(self, name: str, version: int) -> ServedModel:
        key = name or self.default_name or ""
        versions = self._serving.get(key)
        if not versions:
            known = sorted(n for n, v in self._serving.items() if v)
            raise NotFound(f"model {key!r} is not served (served: {known})")
        if version:
            served = versions.get(version)
            if served is None:
                raise NotFound(f"model {key!r} has no version {version} (available: {sorted(versions)})")
            return served
        return versions[max(versions)]

    @contextmanager
    def lease(self, name: str, version: int = 0) -> Iterator[ServedModel]:
        """The version a request runs on, kept open until the request is done."""
        with self._lock:
            served = self._resolve(name, version)
            served.leases += 1
        try:
            yield served
        finally:
            with self._lock:
                served.leases -= 1
                closing = served.draining and served.leases == 0
            if closing:
                self._close(served)

    def get(self, name: str, version: int = 0) -> ServedModel:
        with self._lock:
            return self._resolve(name, version)

    def versions(self, name: str) -> dict[int, ServedModel]:
        with self._lock:
            return dict(self._serving.get(name, {}))

    def models(self) -> list[ServedModel]:
        with self._lock:
            return [s for versions in self._serving.values() for s in versions.values()]

    def statuses(self) -> dict[str, dict[int, VersionStatus]]:
        with self._lock:
            return {name: dict(v) for name, v in self._status.items()}

    # -- one-shot use (tools, tests) and shutdown ------------------------------------------

    def load(self, config: ModelConfig) -> ServedModel:
        """Load the directory in `config.path` as version 1 and serve it."""
        served = self.load_version(config, 1, config.path)
        self.publish(served)
        return served

    def close(self) -> None:
        """Shut down: close every serving version, wait for the retired ones already closing, end
        the worker threads and close the plugins. A retired version still leased by a request closes
        when that request ends. Closing twice does nothing more."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            all_served = [s for versions in self._serving.values() for s in versions.values()]
            self._serving.clear()
        for served in all_served:
            served.runner.close()
        with self._lock:
            unloading = list(self._unloading)
        for thread in unloading:
            thread.join()
        self._workers.close()
        for plugin in self._plugins.values():
            try:
                plugin.close()
            except Exception:  # noqa: BLE001 - one plugin failing to close must not keep the others open
                log.exception("hardware plugin %s failed to close", plugin.name)
