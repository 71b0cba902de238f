"""Assembling and running the gRPC server: Detector, health, reflection, signals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sodd.config import ServeConfig
from sodd.drain import DrainInterceptor, drain
from sodd.lifecycle import ReloadCallback, catch_signals, run_until_stopped, start_watchdog
from sodd.listeners import add_listeners
from sodd.manager import ModelManager
from sodd.metrics import Metrics, MetricsEndpoint, MetricsInterceptor
from sodd.plugin import discover_plugins
from sodd.registry import ModelEvent, ModelRegistry
from sodd.sdnotify import Notifier
from sodd.service import DetectorService
from sodd.settings import Settings
from sodd.v1 import detector_pb2, detector_pb2_grpc

log = logging.getLogger(__name__)
METRICS_RETRY_SECONDS = 10.0


def create_registry(config: ServeConfig, metrics: Metrics | None = None) -> ModelRegistry:
    plugins, problems = discover_plugins()
    for problem in problems:
        log.warning("hardware plugin %s is not usable: %s", problem.name, problem.reason)
    registry = ModelRegistry(plugins, max_pending=config.max_pending, cpu_threads=config.cpu_threads,
                             plugin_problems=problems)
    if metrics is not None:
        metrics.watch(registry)
    return registry


def track_model_health(registry: ModelRegistry, health_servicer: health.aio.HealthServicer) -> None:
    """Each model name is a health service: SERVING while any of its versions serves."""
    loop = asyncio.get_running_loop()

    async def update(name: str) -> None:
        state = health_pb2.HealthCheckResponse.SERVING if registry.versions(name) \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set(name, state)

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
    manager = ModelManager(registry, config)
    try:
        await manager.start()
    except BaseException:
        registry.close()
        raise
    draining = DrainInterceptor()
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics, registry), draining]
    if settings.tokens is not None:
        settings.tokens.default_model = lambda: registry.default_name
        interceptors.append(settings.tokens)
    # gRPC itself bounds the calls in progress: beyond that it answers RESOURCE_EXHAUSTED without
    # reading the request, so a flood cannot pile requests up in memory faster than the loop refuses them.
    server = grpc.aio.server(interceptors=interceptors, maximum_concurrent_rpcs=config.max_concurrent_rpcs, options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ])
    service = DetectorService(config, registry, manager)
    detector_pb2_grpc.add_DetectorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    addresses = add_listeners(server, config, settings.certificates)
    signals = catch_signals()
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(names[0], serving)
    track_model_health(registry, health_servicer)
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
    timeout = settings.config.drain_timeout_seconds
    log.info("%s: refusing new requests, letting %d in-flight ones finish (up to %.0f s)", signal_name,
             draining.running, timeout)
    notifier.stopping(f"draining {draining.running} in-flight requests (up to {timeout:.0f} s)")
    await health_servicer.enter_graceful_shutdown()
    cut = await drain(server, draining, timeout)
    if cut:
        log.warning("drain timeout: %d requests were cancelled", cut)
    await manager.close()
    service.close()
    registry.close()
    if endpoint is not None:
        endpoint.close()
    if watchdog is not None:
        watchdog.cancel()
