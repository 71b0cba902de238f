"""Bearer-token access: which callers may use which models.

The tokens file is TOML mapping each token to the models it may use, or to "*" for all of them:

    "3q2+7w..." = ["visdrone", "cars"]
    "kX9d..."   = "*"

Callers send `authorization: Bearer <token>` metadata. No or an unknown token gets UNAUTHENTICATED,
a known token asking for a model it has no right to gets PERMISSION_DENIED. Health checks stay
open so that orchestrators and load balancers need no secret.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

ALL_MODELS = "*"
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
# Requests that name a model, and the field naming it (empty means the default model); a stream
# is checked message by message.
MODEL_FIELDS = {
    "/sodd.v1.Detector/Detect": "model",
    "/sodd.v1.Detector/DetectBatch": "model",
    "/sodd.v1.Detector/DetectStream": "model",
    "/sodd.v1.Detector/GetModel": "name",
}
# Changing what is served is for "*" tokens only: a detection token must not be able to unload a model.
ADMIN_METHODS = ("/sodd.v1.Detector/LoadModel", "/sodd.v1.Detector/UnloadModel")


class TokenFileError(ValueError):
    pass


def _digest(token: str) -> bytes:
    # Looking tokens up by hash keeps the comparison time independent of how much of a guess matches.
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    rights: Mapping[bytes, frozenset[str]]

    @classmethod
    def parse(cls, text: str, source: str = "tokens file") -> TokenTable:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TokenFileError(f"{source}: {exc}") from exc
        rights = {}
        for token, models in data.items():
            shown = f"{source}: token {token[:4]}..."  # never log a whole secret
            if len(token) < 16:
                raise TokenFileError(f"{shown}: tokens must be at least 16 characters long")
            if isinstance(models, str):
                models = [models]
            if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
                raise TokenFileError(f"{shown}: expected \"*\" or a non-empty list of model names")
            rights[_digest(token)] = frozenset(models)
        return cls(rights)

    @classmethod
    def read(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            raise TokenFileError(f"tokens_file {path}: {exc.strerror}") from exc
        if mode & stat.S_IROTH:
            log.warning("tokens_file %s is readable by every user; chmod o-r it", path)
        return cls.parse(text, f"tokens_file {path}")

    def models_for(self, token: str) -> frozenset[str] | None:
        return self.rights.get(_digest(token))


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the real one that only refuses."""

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, handler.request_deserializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer)
    return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's token; `tokens` may be replaced at any time (reload)."""

    def __init__(self, tokens: TokenTable, default_model: Callable[[], str | None]) -> None:
        self.tokens = tokens
        # Replaced once the registry exists: the model an empty model name means.
        self.default_model = default_model

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        models = self.tokens.models_for(token) if token else None
        handler = await continuation(handler_call_details)
        if models is None:
            reason = "no bearer token" if token is None else "unknown bearer token"
            return refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            f"{reason}: send 'authorization: Bearer <token>' metadata with a token from the daemon's "
                            "tokens file")
        if handler is None or ALL_MODELS in models:
            return handler
        if method in ADMIN_METHODS:
            return refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                           f"{method.rsplit('/', 1)[-1]} needs a token with rights to every model (\"*\")")
        field = MODEL_FIELDS.get(method)
        if field is None:
            return handler
        if handler.unary_unary:
            return self._checked(handler, field, models)
        if handler.stream_stream:
            return self._checked_stream(handler, field, models)
        return refusal(handler, grpc.StatusCode.PERMISSION_DENIED, "this call needs a token for every model")

    async def _check(self, request: Any, field: str, models: frozenset[str],
                     context: grpc.aio.ServicerContext) -> None:
        model = getattr(request, field) or self.default_model() or ""
        if model not in models:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this token has no right to model {model!r}")

    def _checked(self, handler: grpc.RpcMethodHandler, field: str, models: frozenset[str]) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(request, field, models, context)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    def _checked_stream(self, handler: grpc.RpcMethodHandler, field: str,
                        models: frozenset[str]) -> grpc.RpcMethodHandler:
        behavior = handler.stream_stream

        async def checked(request_iterator: AsyncIterator[Any],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async def allowed() -> AsyncIterator[Any]:
                async for request in request_iterator:
                    await self._check(request, field, models, context)
                    yield request

            async for response in behavior(allowed(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(checked, handler.request_deserializer,
                                                     handler.response_serializer)
