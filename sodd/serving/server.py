"""Assembling and running the gRPC server: Detector, health, reflection, signals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sodd.config.schema import ServeConfig
from sodd.observability.metrics import Metrics, MetricsEndpoint, MetricsInterceptor
from sodd.oip import grpc_service_pb2 as oip_pb2
from sodd.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from sodd.plugins.protocol import discover_plugins
from sodd.runtime.manager import ModelManager
from sodd.runtime.registry import ModelEvent, ModelRegistry
from sodd.serving.auth import is_local_peer
from sodd.serving.budgets import BudgetInterceptor, grpc_ceiling
from sodd.serving.drain import DrainInterceptor, drain
from sodd.serving.health import HealthServicer
from sodd.serving.kserve import InferenceService
from sodd.serving.lifecycle import ReloadCallback, catch_signals, run_until_stopped, start_watchdog
from sodd.serving.listeners import add_listeners
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
                             plugin_problems=problems, max_input_pixels=config.max_model_input_pixels)
    if metrics is not None:
        metrics.watch(registry)
    return registry


def default_serving(registry: ModelRegistry) -> bool:
    """Whether a request without a model name would be served: the overall health. Without a
    default model (a repository that has none yet), whether any model serves."""
    if registry.default_name is not None:
        return bool(registry.versions(registry.default_name))
    return bool(registry.models())


def track_model_health(registry: ModelRegistry, health_servicer: health.aio.HealthServicer,
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
        loop.call_soon_threadsafe(lambda: loop.create_task(update(event.name)))

    registry.add_listener(on_event)
    for served in registry.models():
        loop.create_task(update(served.name))


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


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes)]
    if config.max_connection_age_seconds > 0:
        # A GOAWAY to old connections, so clients reconnect and spread over the daemons behind a name.
        options += [("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                    ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_seconds * 1000))]
    return options


async def serve(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. `reload_config` re-reads the configuration on SIGHUP."""
    notifier = Notifier.from_environment()
    notifier.status("loading models")
    watchdog = start_watchdog(notifier)  # through loading, serving and draining
    settings = Settings(config, reload_config)
    metrics = Metrics()
    # Before loading, so slow loads can be watched.
    endpoint = MetricsListener(config.metrics_listen, metrics) if config.metrics_listen else None
    registry = create_registry(config, metrics)
    manager = ModelManager(registry, config, on_watch_failure=metrics.watch_failures.inc)
    try:
        await manager.start()
    except BaseException:
        registry.close()
        raise
    draining = DrainInterceptor()
    access = settings.tokens
    access.default_model = lambda: registry.default_name
    # The servicer says when it answers a DetectStream frame for a model the caller may not use itself.
    access.stream_frames_checked = bool(getattr(DetectorService, "CHECKS_STREAM_FRAME_RIGHTS", False))
    # Budgets first: a call is admitted (or refused, before its body is read) before anything else
    # counts it; see sodd.serving.budgets. gRPC's own limit stays as a ceiling above the budgets.
    observer = MetricsInterceptor(metrics, registry, lambda: not draining.accepting)
    budgets = BudgetInterceptor(config, access.refuses, observer.record_refusal)
    interceptors: list[grpc.aio.ServerInterceptor] = [budgets, observer, draining, access]
    server = grpc.aio.server(interceptors=interceptors, maximum_concurrent_rpcs=grpc_ceiling(config),
                             options=server_options(config))
    service = DetectorService(config, registry, manager)
    detector_pb2_grpc.add_DetectorServicer_to_server(service, server)
    stopping = False

    def ready() -> bool:
        return not stopping and default_serving(registry)

    def local_manage_only(context: grpc.aio.ServicerContext) -> bool:
        # Without a tokens file, loading and unloading stay local unless allowed (as LoadModel).
        return access.tokens is None and not access.allow_remote_management \
            and not is_local_peer(context.peer() or "")

    inference = InferenceService(service.detector, manager, metrics, ready, lambda: stopping,
                                 local_manage_only, config.max_streams)
    oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)
    names = (detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name)
    # "liveness" answers SERVING while the process runs (a Kubernetes liveness probe must not restart a
    # daemon whose default model is unloaded); it turns NOT_SERVING only with the drain.
    health_servicer = HealthServicer(always_answered=(names[0], LIVENESS))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(names, server)
    addresses = add_listeners(server, config, settings.certificates)
    signals = catch_signals()
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(names[0], serving)
    await health_servicer.set(LIVENESS, serving)
    track_model_health(registry, health_servicer, ("", names[0]))
    manager.start_watching()
    log.info("listening on %s, models: %s", ", ".join(addresses),
             ", ".join(f"{m.name} ({m.model_dir.model_name} on {m.device})" for m in registry.models()))
    print(f"sodd: listening on {' '.join(addresses)}", flush=True)

    def status() -> str:
        return f"serving {', '.join(sorted({m.name for m in registry.models()}))} on {', '.join(addresses)}"

    notifier.ready(status())
    # SIGHUP (systemd's ExecReload) runs these in order: configuration and certificates, then the
    # model directories. Anything else that must follow a reload appends its own coroutine function.
    async def follow_models() -> None:
        manager.update_config(settings.config)
        await manager.reconcile()

    reload_callbacks: list[ReloadCallback] = [settings.reload, follow_models]
    signal_name = (await run_until_stopped(signals, notifier, reload_callbacks, status)).name
    timeout, grace = settings.config.drain_timeout_seconds, settings.config.drain_grace_seconds
    # Health first, at once: balancers start taking the daemon out while it still answers (sodd.serving.drain).
    stopping = True
    await health_servicer.enter_graceful_shutdown()
    log.info("%s: health NOT_SERVING; then refusing new requests and letting %d in-flight ones finish "
             "(up to %.0f s)", signal_name, draining.running, timeout)
    notifier.stopping(f"draining {draining.running} in-flight requests (up to {timeout:.0f} s)")
    cut = await drain(server, draining, grace, timeout)
    if cut:
        log.warning("drain timeout: %d requests were cancelled", cut)
    log.info("stopped serving; closing the models")
    await manager.close()
    service.close()
    registry.close()
    if endpoint is not None:
        endpoint.close()
    if watchdog is not None:
        watchdog.cancel()
    log.info("closed")
