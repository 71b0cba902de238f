"""The health service, with per-model names answered only to callers who may see the model.

Health stays open (no token needed), so that probes and load balancers need no secret. The
overall name "" and the Detector service always answer. A per-model name answers only callers
whose rights include that model (sodd.serving.auth.visible_models): with a tokens file, a caller without
a token, or whose token does not list the model, gets exactly what an unknown name gets (NOT_FOUND
from Check, SERVICE_UNKNOWN from Watch), so health cannot be used to learn which models exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from sodd.serving.auth import visible_models

# Asked instead of a hidden name: model names contain no "/", so no served name is ever this.
HIDDEN = "/hidden"


class HealthServicer(health.aio.HealthServicer):
    def __init__(self, always_answered: Iterable[str] = ("",)) -> None:
        super().__init__()
        self._always = frozenset(("", *always_answered))

    def _seen(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckRequest:
        visible = visible_models()
        if visible is None or request.service in self._always or request.service in visible:
            return request
        return health_pb2.HealthCheckRequest(service=HIDDEN)

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - gRPC's name
                    context: grpc.aio.ServicerContext) -> Any:
        return await super().Check(self._seen(request), context)

    async def Watch(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - gRPC's name
                    context: grpc.aio.ServicerContext) -> None:
        await super().Watch(self._seen(request), context)
