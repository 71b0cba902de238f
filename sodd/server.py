"""Assembling and running the gRPC server: Detector, health, reflection, signals."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sodd.config import ServeConfig
from sodd.plugin import discover_plugins
from sodd.registry import ModelRegistry
from sodd.service import DetectorService
from sodd.v1 import detector_pb2, detector_pb2_grpc

log = logging.getLogger(__name__)
# Time in-flight requests get to finish on SIGTERM / SIGINT.
STOP_GRACE_SECONDS = 10.0


def load_models(config: ServeConfig) -> ModelRegistry:
    plugins, problems = discover_plugins()
    for problem in problems:
        log.warning("hardware plugin %s is not usable: %s", problem.name, problem.reason)
    registry = ModelRegistry(plugins, max_pending=config.max_pending, cpu_threads=config.cpu_threads,
                             plugin_problems=problems)
    try:
        for model in config.models:
            registry.load(model)
    except BaseException:
        registry.close()
        raise
    return registry


async def serve(config: ServeConfig) -> None:
    registry = await asyncio.to_thread(load_models, config)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ])
    service = DetectorService(config, registry)
    detector_pb2_grpc.add_DetectorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(names[0], serving)
    for served in registry.models():
        await health_servicer.set(served.name, serving)
    host = config.listen.rsplit(":", 1)[0]
    log.info("listening on %s:%d, models: %s", host, port,
             ", ".join(f"{m.name} ({m.model_dir.model_name} on {m.device})" for m in registry.models()))
    print(f"sodd: listening on {host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: refusing new requests, letting in-flight ones finish (%.0f s)", STOP_GRACE_SECONDS)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(STOP_GRACE_SECONDS)
    service.close()
    registry.close()
