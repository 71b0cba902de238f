"""The daemon as an object: start, serve until a signal, shut down; whatever was started is released.

`Daemon.start` builds the pieces in order (watchdog, metrics endpoint, registry, models, servicers,
listeners) and registers each one's release on an exit stack as soon as it exists, so a failure at
any step (a taken port, a bad certificate, a model that cannot load) releases what was already
started instead of leaking threads, sockets and predictors. `Daemon.serve` runs start, the signal
loop and `shutdown` (drain, then the exit stack) in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sodd.config.schema import ServeConfig
from sodd.observability.endpoint import MetricsEndpoint
from sodd.observability.metrics import Metrics
from sodd.oip import grpc_service_pb2 as oip_pb2
from sodd.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from sodd.plugins.discovery import discover_plugins
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelEvent, ModelRegistry
from sodd.runtime.served_metrics import watch_models
from sodd.runtime.tasks import TaskSet
from sodd.serving.auth import is_local_peer
from sodd.serving.budgets import BudgetInterceptor, grpc_ceiling
from sodd.serving.drain import DrainInterceptor, drain
from sodd.serving.health import HealthServicer
from sodd.serving.kserve import InferenceService
from sodd.serving.lifecycle import ReloadCallback, catch_signals, run_until_stopped, start_watchdog
from sodd.serving.listeners import add_listeners
from sodd.serving.metrics_interceptor import MetricsInterceptor
from sodd.serving.reflection import enable_reflection
from sodd.serving.sdnotify import Notifier
from sodd.serving.service import DetectorService
from sodd.serving.settings import Settings
from sodd.v1 import detector_pb2, detector_pb2_grpc

log = logging.getLogger(__name__)
METRICS_RETRY_SECONDS = 10.0
LIVENESS = "liveness"


def create_registry(config: ServeConfig, metrics: Metrics | None = None) -> ModelRegistry:
    plugins, problems = discover_plugins()
    for problem in problems:
        log.warning("hardware plugin %s is not usable: %s", problem.name, problem.reason)
    registry = ModelRegistry(plugins, max_pending=config.max_pending, cpu_threads=config.cpu_threads,
                             plugin_problems=problems, max_input_pixels=config.max_model_input_pixels,
                             observer=metrics)
    if metrics is not None:
        watch_models(metrics, registry)
    return registry


def default_serving(registry: ModelRegistry) -> bool:
    """Whether a request without a model name would be served: the overall health. Without a
    default model (a repository that has none yet), whether any model serves."""
    if registry.default_name is not None:
        return bool(registry.versions(registry.default_name))
    return bool(registry.models())


def track_model_health(registry: ModelRegistry, health_servicer: health.aio.HealthServicer, tasks: TaskSet,
                       overall: tuple[str, ...] = ()) -> None:
    """Each model name is a health service: SERVING while any of its versions serves. The `overall`
    names ("" and the Detector service) follow the default model, so that unloading it shows."""
    loop = asyncio.get_running_loop()

    def state(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def update(name: str) -> None:
        await health_servicer.set(name, state(bool(registry.versions(name))))
        for service in overall:
            await health_servicer.set(service, state(default_serving(registry)))

    def on_event(event: ModelEvent) -> None:
        tasks.spawn_threadsafe(loop, lambda: update(event.name))

    registry.add_listener(on_event)
    for served in registry.models():
        tasks.spawn(update(served.name))


class MetricsListener:
    """The /metrics endpoint. A taken port must not stop detection on an edge device: the daemon
    serves without metrics, says so, and keeps trying to bind every METRICS_RETRY_SECONDS."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        self._listen = listen
        self._metrics = metrics
        self.endpoint: MetricsEndpoint | None = None
        self._retry: asyncio.Task | None = None
        if not self._try_open():
            self._retry = asyncio.get_running_loop().create_task(self._keep_trying())

    def _try_open(self) -> bool:
        try:
            self.endpoint = MetricsEndpoint(self._listen, self._metrics.registry)
        except OSError as exc:
            log.error("metrics endpoint cannot listen on %s (%s); serving without metrics, retrying every %.0f s",
                      self._listen, exc.strerror or exc, METRICS_RETRY_SECONDS)
            return False
        log.info("metrics on %s", self.endpoint.url)
        return True

    async def _keep_trying(self) -> None:
        while True:
            await asyncio.sleep(METRICS_RETRY_SECONDS)
            if self._try_open():
                return

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self.endpoint is not None:
            self.endpoint.close()


# gRPC core holds calls that arrived faster than the event loop takes them. Between its soft limit
# (default 1,000 such calls) and its hard one (3,000) it drops them at random, and a dropped call
# reaches its client as CANCELLED: not retried, and never seen by sodd's budgets or counters (found
# under a 2,000-call flood on an emulated aarch64 board, where 40 to 46 calls ended so). With the
# soft limit at the hard one, the same 3,000 calls are held and each gets sodd's own answer (OK, or
# RESOURCE_EXHAUSTED from the budgets).
PENDING_CALLS_LIMIT = 3000


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.server.max_pending_requests", PENDING_CALLS_LIMIT),
               ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_LIMIT)]
    if config.max_connection_age_seconds > 0:
        # A GOAWAY to old connections, so clients reconnect and spread over the daemons behind a name.
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_seconds * 1000))]
    return options



class Daemon:
    """One daemon's life: `start` (everything up, READY), `run_until_stopped`, `shutdown` (drain,
    release). `serve` does all three. Build a new one to start again."""

    def __init__(self, config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> None:
        self.config = config
        self._reload_config = reload_config
        self._exit = contextlib.AsyncExitStack()
        self.stopping = False
        self.addresses: list[str] = []

    async def serve(self) -> None:
        """Serve until SIGTERM/SIGINT, then drain and release everything."""
        async with self._exit:
            await self.start()
            signal_name = await self.run_until_stopped()
            await self.shutdown(signal_name)

    async def start(self) -> None:
        """Load the models and listen. On failure, what was started so far is released before the
        error propagates; on success the caller must `shutdown` (or `release`)."""
        try:
            await self._start()
        except BaseException:
            await self.release()
            if hasattr(self, "signals"):
                release_signals()
            raise

    async def release(self) -> None:
        """Close what `start` opened, in reverse order; safe to call more than once."""
        await self._exit.aclose()

    async def _start(self) -> None:
        config, stack = self.config, self._exit
        self.notifier = Notifier.from_environment()
        self.notifier.status("loading models")
        watchdog = start_watchdog(self.notifier)  # through loading, serving and draining
        if watchdog is not None:
            stack.callback(watchdog.cancel)
        self.settings = Settings(config, self._reload_config)
        self.metrics = metrics = Metrics()
        # Before loading, so slow loads can be watched.
        if config.metrics_listen:
            stack.callback(MetricsListener(config.metrics_listen, metrics).close)
        self.registry = registry = create_registry(config, metrics)
        stack.callback(registry.close)
        self.manager = manager = ModelManager(registry, config, on_watch_failure=metrics.watch_failures.inc)
        stack.push_async_callback(manager.close)
        await manager.start()

        self.draining = draining = DrainInterceptor()
        # The servicer says when it answers a DetectStream frame for a model the caller may not use itself.
        access = self.settings.access(lambda: registry.default_name,
                                      bool(getattr(DetectorService, "CHECKS_STREAM_FRAME_RIGHTS", False)))
        # Budgets first: a call is admitted (or refused, before its body is read) before anything else
        # counts it; see sodd.serving.budgets. gRPC's own limit stays as a ceiling above the budgets.
        observer = MetricsInterceptor(metrics, registry, lambda: not draining.accepting)
        budgets = BudgetInterceptor(config, access.refuses, observer.record_refusal)
        interceptors: list[grpc.aio.ServerInterceptor] = [budgets, observer, draining, access]
        self.server = server = grpc.aio.server(interceptors=interceptors, maximum_concurrent_rpcs=grpc_ceiling(config),
                                               options=server_options(config))
        service = DetectorService(config, registry, manager, observer=metrics)
        stack.callback(service.close)
        detector_pb2_grpc.add_DetectorServicer_to_server(service, server)

        def ready() -> bool:
            return not self.stopping and default_serving(registry)

        def local_manage_only(context: grpc.aio.ServicerContext) -> bool:
            # Without a tokens file, loading and unloading stay local unless allowed (as LoadModel).
            return access.tokens is None and not access.allow_remote_management \
                and not is_local_peer(context.peer() or "")

        inference = InferenceService(service.detector, manager, metrics, ready, lambda: self.stopping,
                                     local_manage_only, config.max_streams)
        oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
        names = (detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
        # "liveness" answers SERVING while the process runs (a Kubernetes liveness probe must not restart
        # a daemon whose default model is unloaded); it turns NOT_SERVING only with the drain.
        self.health = health_servicer = HealthServicer(always_answered=(names[0], LIVENESS))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection(names, server)
        self.addresses = add_listeners(server, config, self.settings.certificates)
        self.signals = catch_signals()  # kept through the drain: a second SIGTERM must not cut it short
        await server.start()
        # Stopped without grace on the way out; after a drain nothing is left for it to cut.
        stack.push_async_callback(server.stop, None)
        serving = health_pb2.HealthCheckResponse.SERVING
        await health_servicer.set("", serving)
        await health_servicer.set(names[0], serving)
        await health_servicer.set(LIVENESS, serving)
        tasks = TaskSet("health")
        stack.push_async_callback(tasks.close)
        track_model_health(registry, health_servicer, tasks, ("", names[0]))
        manager.start_watching()
        log.info("listening on %s, models: %s", ", ".join(self.addresses),
                 ", ".join(f"{m.name} ({m.model_dir.model_name} on {m.device})" for m in registry.models()))
        print(f"sodd: listening on {' '.join(self.addresses)}", flush=True)
        self.notifier.ready(self.status())

    def status(self) -> str:
        models = ", ".join(sorted({m.name for m in self.registry.models()}))
        return f"serving {models} on {', '.join(self.addresses)}"

    async def run_until_stopped(self) -> str:
        """Serve reloads until SIGTERM or SIGINT; returns that signal's name."""
        # SIGHUP (systemd's ExecReload) runs these in order: configuration and certificates, then the
        # model directories. Anything else that must follow a reload appends its own coroutine function.
        async def follow_models() -> None:
            self.manager.update_config(self.settings.config)
            await self.manager.reconcile()

        reload_callbacks: list[ReloadCallback] = [self.settings.reload, follow_models]
        return (await run_until_stopped(self.signals, self.notifier, reload_callbacks, self.status)).name

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Drain as load balancers expect (sodd.serving.drain), then release everything."""
        timeout, grace = self.settings.config.drain_timeout_seconds, self.settings.config.drain_grace_seconds
        # Health first, at once: balancers start taking the daemon out while it still answers.
        self.stopping = True
        await self.health.enter_graceful_shutdown()
        log.info("%s: health NOT_SERVING; then refusing new requests and letting %d in-flight ones finish "
                 "(up to %.0f s)", reason, self.draining.running, timeout)
        self.notifier.stopping(f"draining {self.draining.running} in-flight requests (up to {timeout:.0f} s)")
        cut = await drain(self.server, self.draining, grace, timeout)
        if cut:
            log.warning("drain timeout: %d requests were cancelled", cut)
        log.info("stopped serving; closing the models")
        await self.release()
        log.info("closed")


def release_signals() -> None:
    """Back to the default actions, after a failed start (the process may go on, as tests do)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)


async def serve(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. `reload_config` re-reads the configuration on SIGHUP."""
    await Daemon(config, reload_config).serve()
