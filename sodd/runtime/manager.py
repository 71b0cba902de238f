"""Keeping the served versions in step with the model directories on disk.

Triggers — file-system changes (inotify through watchfiles, or polling), SIGHUP, and the
LoadModel / UnloadModel RPCs — all lead to one `reconcile`: scan the sources, pick the versions
the policy wants among the complete ones, load the missing ones beside the serving ones, publish
them, then retire what is no longer wanted. Reconciles run one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from sodd.config.schema import ModelConfig, ServeConfig
from sodd.errors import FailedPrecondition, NotFound
from sodd.model.names import check_name
from sodd.observability.logs import quote
from sodd.runtime.registry import ModelRegistry, ModelState
from sodd.runtime.repository import VersionDir, scan_repository, scan_source
from sodd.runtime.tasks import TaskSet

log = logging.getLogger(__name__)
# After the watcher fails it waits, doubling from the first delay up to the cap, and rescans:
# a failure that repeats (out of descriptors, say) must neither spin nor end the watching.
WATCH_RETRY_FIRST_SECONDS = 0.5
WATCH_RETRY_MAX_SECONDS = 30.0


@dataclass(frozen=True)
class ModelSource:
    config: ModelConfig
    explicit: bool  # named on the command line or in the config: it must load at start

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def path(self) -> Path:
        return self.config.path


class ModelManager:
    def __init__(self, registry: ModelRegistry, config: ServeConfig,
                 on_watch_failure: Callable[[], None] | None = None) -> None:
        self._registry = registry
        # Called once per failure of the watcher (or of a reconcile it started): a metric counts them.
        self._on_watch_failure = on_watch_failure
        self._config = config
        self._explicit = {m.name: ModelSource(m, True) for m in config.models}
        self._lock = asyncio.Lock()
        self._failed: dict[tuple[str, int], tuple] = {}  # version -> fingerprint that failed
        self._excluded: set[tuple[str, int | None]] = set()  # by UnloadModel; None = every version
        self._pinned: set[tuple[str, int]] = set()  # by LoadModel with a version
        self._recheck: asyncio.TimerHandle | None = None
        self._second_look: asyncio.TimerHandle | None = None
        self._watch_task: asyncio.Task | None = None
        self._tasks = TaskSet("model manager")  # reconciles nobody awaits

    def update_config(self, config: ServeConfig) -> None:
        """Take a reloaded configuration (SIGHUP): models added, removed or changed in it follow at
        the next reconcile; a changed model reloads its versions beside the serving ones."""
        roots_before = self.watch_roots()
        self._config = config
        self._explicit = {m.name: ModelSource(m, True) for m in config.models}
        for source in self._explicit.values():
            self._registry.register_config(source.config)
        if self._watch_task is not None and self.watch_roots() != roots_before:
            self._watch_task.cancel()
            self.start_watching()

    # -- sources ---------------------------------------------------------------------------

    def sources(self) -> dict[str, ModelSource]:
        found = dict(self._explicit)
        root = self._config.model_repository
        if root is not None:
            for name, path in scan_repository(root).items():
                if name not in found:
                    found[name] = ModelSource(replace(self._config.repository_defaults, name=name, path=path), False)
        return found

    # -- reconciling -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything that is on disk now; an explicit model that cannot load stops the start."""
        for source in self._explicit.values():
            self._registry.register_config(source.config)
        await self.reconcile(initial=True)
        for name, source in self._explicit.items():
            if not self._registry.versions(name):
                statuses = self._registry.statuses().get(name, {})
                reasons = "; ".join(f"version {v}: {s.reason}" for v, s in sorted(statuses.items()) if s.reason)
                raise FailedPrecondition(f"model {name} could not be loaded from {source.path}: "
                                         f"{reasons or 'no complete version directory'}")

    async def reconcile(self, names: Iterable[str] | None = None, initial: bool = False) -> None:
        async with self._lock:
            sources = await asyncio.to_thread(self.sources)
            wanted = list(names) if names is not None else sorted(set(sources) | self._served_names())
            for name in wanted:
                source = sources.get(name)
                if source is None:
                    for version in self._registry.versions(name):
                        self._registry.unpublish(name, version)
                    continue
                await self._reconcile_one(source, initial)

    def _served_names(self) -> set[str]:
        return {s.name for s in self._registry.models()}

    def _schedule_recheck(self) -> None:
        if self._recheck is not None:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._recheck = None
            self._tasks.spawn(self._reconcile_reported())

        self._recheck = loop.call_later(self._config.settle_seconds + 0.05, fire)

    def _candidates(self, source: ModelSource, scanned: dict[int, VersionDir], initial: bool) -> dict[int, VersionDir]:
        name, now = source.name, time.time()
        if (name, None) in self._excluded:
            return {}
        candidates = {}
        for version, vdir in scanned.items():
            if (name, version) in self._excluded:
                continue
            if not initial and not vdir.settled(self._config.settle_seconds, now):
                self._schedule_recheck()
                continue
            if self._failed.get((name, version)) == vdir.fingerprint:
                continue
            if vdir.missing:
                self._failed[(name, version)] = vdir.fingerprint
                self._registry.set_status(name, version, ModelState.FAILED,
                                          f"incomplete version directory: missing {', '.join(vdir.missing)}", vdir.path)
                continue
            candidates[version] = vdir
        return candidates

    async def _reconcile_one(self, source: ModelSource, initial: bool) -> None:
        name = source.name
        scanned = await asyncio.to_thread(scan_source, source.path)
        if not scanned and source.explicit and self._registry.versions(name):
            # A configured model whose directory vanished keeps serving from memory: deleting files
            # under a running daemon is an accident far more often than an intent to stop serving.
            log.warning("model %s: directory %s is gone or empty; the loaded version keeps serving",
                        name, source.path)
            return
        for version in list(self._registry.statuses().get(name, {})):
            if version not in scanned and version not in self._registry.versions(name):
                self._registry.forget_status(name, version)
        candidates = self._candidates(source, scanned, initial)
        pinned = {v for (n, v) in self._pinned if n == name}
        # A serving version whose directory is still there stays available even when its files
        # changed into something unloadable: the copy in memory keeps answering.
        available = set(candidates) | {v for v in self._registry.versions(name)
                                       if v in scanned and (name, v) not in self._excluded}
        while True:
            desired = set(source.config.version_policy.select(sorted(available))) | (pinned & available)
            serving = self._registry.versions(name)
            todo = [v for v in desired if v in candidates
                    and (v not in serving or serving[v].fingerprint != candidates[v].fingerprint
                         or serving[v].config != source.config)]
            if not todo:
                break
            version = max(todo)
            vdir = candidates.pop(version)
            try:
                served = await asyncio.to_thread(
                    self._registry.load_version, source.config, version, vdir.path, vdir.fingerprint)
            except Exception:  # noqa: BLE001 - reported by the registry; the serving versions stay
                self._failed[(name, version)] = vdir.fingerprint
                if version not in serving:
                    available.discard(version)
                continue
            self._failed.pop((name, version), None)
            self._registry.publish(served)
        for version in self._registry.versions(name):
            if version not in desired:
                self._registry.unpublish(name, version)

    # -- RPC triggers ----------------------------------------------------------------------

    async def load_model(self, name: str, version: int = 0) -> None:
        check_name(name, "name")
        # Nothing is remembered for a name that is not there: pinning first let made-up names
        # pile up for good (60 names of 8 MB each cost 874 MB).
        if name not in await asyncio.to_thread(self.sources):
            raise NotFound(f"model {quote(name)} is neither configured nor in the model repository")
        self._excluded.discard((name, None))
        if version:
            self._excluded.discard((name, version))
            self._pinned.add((name, version))
        await self.reconcile([name])
        if name not in await asyncio.to_thread(self.sources):  # removed meanwhile
            self._pinned.discard((name, version))
            raise NotFound(f"model {quote(name)} is neither configured nor in the model repository")
        serving = self._registry.versions(name)
        if (version and version not in serving) or not serving:
            status = self._registry.statuses().get(name, {}).get(version or -1)
            reason = status.reason if status else "no complete version directory matches"
            raise FailedPrecondition(f"model {quote(name)} version {version or 'latest'} did not load: {reason}")

    async def unload_model(self, name: str, version: int = 0) -> None:
        check_name(name, "name")
        async with self._lock:
            serving = self._registry.versions(name)
            if not serving or (version and version not in serving):
                raise NotFound(f"model {quote(name)} version {version or 'any'} is not served "
                               f"(available: {sorted(serving)})")
            if version:
                self._excluded.add((name, version))
                self._pinned.discard((name, version))
                self._registry.unpublish(name, version)
            else:
                self._excluded.add((name, None))
                self._pinned = {(n, v) for (n, v) in self._pinned if n != name}
                for v in serving:
                    self._registry.unpublish(name, v)

    # -- watching --------------------------------------------------------------------------

    def watch_roots(self) -> list[Path]:
        roots = [s.path for s in self._explicit.values()]
        if self._config.model_repository is not None:
            roots.append(self._config.model_repository)
        return [r for r in roots if r.exists()]

    def _names_for(self, changed: Path) -> set[str]:
        names = set()
        for name, source in self._explicit.items():
            if changed == source.path or source.path in changed.parents:
                names.add(name)
        root = self._config.model_repository
        if root is not None and root in changed.parents:
            names.add(changed.relative_to(root).parts[0])
        return names

    def _watch_failed(self, exc: BaseException, retry_in: float) -> None:
        log.warning("model watcher failed (%s: %s); rescanning in %.1f s", type(exc).__name__, exc, retry_in)
        if self._on_watch_failure is not None:
            self._on_watch_failure()

    async def watch(self) -> None:
        """Reconcile the models whose files change, until cancelled. Whatever fails (the watcher,
        a rescan, a reconcile) is logged, counted, and retried after a backoff that doubles up
        to WATCH_RETRY_MAX_SECONDS; the first rescan that succeeds resets it."""
        from watchfiles import awatch

        failures = 0
        rescan = False  # after a failure, changes may have been missed
        while True:
            try:
                if rescan:
                    await self.reconcile()
                    rescan, failures = False, 0
                roots = self.watch_roots()
                if not roots:
                    await asyncio.sleep(self._config.settle_seconds)
                    continue
                async for changes in awatch(*roots, debounce=int(self._config.debounce_seconds * 1000),
                                            force_polling=self._config.poll_files, recursive=True,
                                            poll_delay_ms=int(self._config.debounce_seconds * 1000)):
                    names = set().union(*(self._names_for(Path(p)) for _, p in changes))
                    if names:
                        await self.reconcile(sorted(names))
                    failures = 0
            except FileNotFoundError as exc:
                # A watched directory vanished: rescan and watch what exists now.
                log.info("restarting the file watcher: %s", exc)
                rescan = True
                await asyncio.sleep(self._config.debounce_seconds)
            except Exception as exc:  # noqa: BLE001 - anything else: back off and try again
                rescan = True
                retry_in = min(WATCH_RETRY_MAX_SECONDS, WATCH_RETRY_FIRST_SECONDS * 2 ** min(failures, 20))
                failures += 1
                self._watch_failed(exc, retry_in)
                await asyncio.sleep(retry_in)

    async def _reconcile_reported(self) -> None:
        """A reconcile nobody awaits: its failure is logged and counted like the watcher's."""
        try:
            await self.reconcile()
        except Exception as exc:  # noqa: BLE001 - the watcher rescans later
            self._watch_failed(exc, self._config.settle_seconds)

    def start_watching(self) -> None:
        loop = asyncio.get_running_loop()
        self._watch_task = loop.create_task(self.watch())
        # Files placed between the start-up scan and the watch taking hold would be missed: look
        # once more when the watcher is surely running.
        self._second_look = loop.call_later(self._config.debounce_seconds * 2,
                                            lambda: self._tasks.spawn(self._reconcile_reported()))

    async def close(self) -> None:
        for timer in (self._recheck, self._second_look):
            if timer is not None:
                timer.cancel()
        await self._tasks.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
