"""Who may do what: bearer tokens with scopes, the management rule without tokens, and the caller's
rights as the servicer sees them.

The tokens file is TOML; each token (16 characters or more) names what it may do:

    "3q2+7w..." = ["visdrone", "cars"]                  # detect on these models
    "kX9d..."   = "*"                                   # every model, and manage
    "Pe4m..."   = { models = ["visdrone"], manage = true }
    "Zr8t..."   = { models = "*" }                      # every model, no management

A table may also be written as a `["<token>"]` section, or under a `[tokens."<token>"]` section.
"detect" covers Detect, DetectBatch, DetectStream and GetModel on the listed models; "manage"
allows LoadModel and UnloadModel. Any known token may list models and devices and watch models.

Callers send `authorization: Bearer <token>` metadata. No or an unknown token gets UNAUTHENTICATED,
a known token asking for a model or a scope it has no right to gets PERMISSION_DENIED. Health and
reflection stay open so that orchestrators, load balancers and grpcurl need no secret; per-model
health names answer only callers whose token can see that model (sodd.serving.health).

Without a tokens file anyone who can connect may detect, but LoadModel and UnloadModel are accepted
only from local peers (the Unix socket, 127.0.0.0/8, ::1) unless `allow_remote_management` is set.

`visible_models()` and `may_manage()` tell the servicer the rights of the call it is serving.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import stat
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc

from sodd.observability.logs import quote
from sodd.serving.streams import relayed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

ALL_MODELS = "*"
# Open to every caller: probes and discovery tools carry no secret.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
DETECT_STREAM = "/sodd.v1.Detector/DetectStream"
# Requests that name a model, and the field naming it (empty means the default model); a stream
# is checked message by message.
MODEL_FIELDS = {
    "/sodd.v1.Detector/Detect": "model",
    "/sodd.v1.Detector/DetectBatch": "model",
    DETECT_STREAM: "model",
    "/sodd.v1.Detector/GetModel": "name",
}
# Changing what is served needs the manage scope: a detection token must not be able to unload a model.
ADMIN_METHODS = ("/sodd.v1.Detector/LoadModel", "/sodd.v1.Detector/UnloadModel")
TABLE_KEYS = ("models", "manage")


class TokenFileError(ValueError):
    pass


@dataclass(frozen=True)
class Rights:
    """What one caller may do: detect on `models` (None: every model), and manage if `manage`."""

    models: frozenset[str] | None
    manage: bool

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


EVERYTHING = Rights(None, True)
NOTHING = Rights(frozenset(), False)
# Set by TokenInterceptor around each call it serves. Outside an intercepted call (a servicer used
# in-process by tools and tests) nothing is narrowed.
_rights: ContextVar[Rights] = ContextVar("sodd_caller_rights", default=EVERYTHING)


def caller_rights() -> Rights:
    return _rights.get()


def visible_models() -> frozenset[str] | None:
    """The models the current caller may see and use; None: every model (no tokens configured, or
    a token for "*")."""
    return _rights.get().models


def may_manage() -> bool:
    """Whether the current caller may load and unload models."""
    return _rights.get().manage


def is_local_peer(peer: str) -> bool:
    """A Unix socket or loopback peer, from grpc's `context.peer()` (brackets may come %-encoded)."""
    peer = unquote(peer)
    return peer.startswith(("unix:", "ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127."))


def _digest(token: str) -> bytes:
    # Looking tokens up by hash keeps the comparison time independent of how much of a guess matches.
    return hashlib.sha256(token.encode()).digest()


def _rights_of(value: Any, shown: str) -> Rights:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(TABLE_KEYS))
        if unknown:
            raise TokenFileError(f"{shown}: unknown key {unknown[0]!r}; a token's table may have "
                                 f"{' and '.join(TABLE_KEYS)}")
        manage = value.get("manage", False)
        if not isinstance(manage, bool):
            raise TokenFileError(f"{shown}: manage must be true or false")
        models = value.get("models", [])
        if models == ALL_MODELS:
            return Rights(None, manage)
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise TokenFileError(f"{shown}: models must be \"*\" or a list of model names")
        if not models and not manage:
            raise TokenFileError(f"{shown}: the token may do nothing: give it models or manage = true")
        return Rights(None if ALL_MODELS in models else frozenset(models), manage)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m for m in value):
        raise TokenFileError(f"{shown}: expected \"*\", a non-empty list of model names, or a table "
                             "such as { models = [\"a\"], manage = true }")
    # The original format: "*" (alone or in a list) is every model and management.
    return EVERYTHING if ALL_MODELS in value else Rights(frozenset(value), False)


@dataclass(frozen=True)
class TokenTable:
    rights: Mapping[bytes, Rights]

    @classmethod
    def parse(cls, text: str, source: str = "tokens file") -> TokenTable:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TokenFileError(f"{source}: {exc}") from exc
        nested = data.pop("tokens", None)  # [tokens."<token>"] sections: "tokens" is too short to be a token
        if nested is not None:
            if not isinstance(nested, dict):
                raise TokenFileError(f"{source}: tokens must be a table of tokens")
            duplicated = set(nested) & set(data)
            if duplicated:
                raise TokenFileError(f"{source}: token {sorted(duplicated)[0][:4]}... is given twice")
            data.update(nested)
        rights = {}
        for token, value in data.items():
            shown = f"{source}: token {token[:4]}..."  # never log a whole secret
            if len(token) < 16:
                raise TokenFileError(f"{shown}: tokens must be at least 16 characters long")
            rights[_digest(token)] = _rights_of(value, shown)
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

    def rights_for(self, token: str) -> Rights | None:
        return self.rights.get(_digest(token))

    def models_for(self, token: str) -> frozenset[str] | None:
        """The models a token may use (every model: {"*"}); None for an unknown token."""
        rights = self.rights_for(token)
        if rights is None:
            return None
        return frozenset((ALL_MODELS,)) if rights.models is None else rights.models


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the real one that only refuses (it never looks at the request)."""

    async def refuse(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler is None or handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, handler.request_deserializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer)
    return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer)


async def outcome(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


RightsOf = Callable[[grpc.aio.ServicerContext], Rights]


def with_rights(handler: grpc.RpcMethodHandler, rights_of: RightsOf,
                check: Callable[[Rights, grpc.aio.ServicerContext], Any] | None = None) -> grpc.RpcMethodHandler:
    """`handler` with the caller's rights set for its behaviour (and `check`, a coroutine that may
    abort, awaited first). Each call runs in its own task, so the value ends with the call."""

    async def enter(context: grpc.aio.ServicerContext) -> None:
        rights = rights_of(context)
        _rights.set(rights)
        if check is not None:
            await check(rights, context)

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary or handler.stream_unary:
        behavior = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await enter(context)
            return await outcome(behavior(request, context))

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, deserialize, serialize)
    streaming = handler.unary_stream or handler.stream_stream

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await enter(context)
        async with relayed(streaming(request, context)) as responses:
            async for response in responses:
                yield response

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(stream, deserialize, serialize)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's rights and hands them to the servicer; `tokens` (None: no tokens file)
    and `allow_remote_management` may be replaced at any time (reload)."""

    def __init__(self, tokens: TokenTable | None, default_model: Callable[[], str | None],
                 allow_remote_management: bool = False, stream_frames_checked: bool = False) -> None:
        self.tokens = tokens
        # The model an empty model name means (the registry's default, which LoadModel can change).
        self.default_model = default_model
        self.allow_remote_management = allow_remote_management
        # True once the servicer answers a DetectStream frame for a model the caller may not use
        # with a per-frame error (it asks visible_models()); until then such a frame ends the stream.
        self.stream_frames_checked = stream_frames_checked

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if self.tokens is None:
            return self._without_tokens(handler, method)
        token, rights = self._token_rights(handler_call_details)
        if method.startswith(OPEN_SERVICES):
            known = rights or NOTHING  # open, but a caller without a token sees no model
            return with_rights(handler, lambda _: known)
        if rights is None:
            reason = "no bearer token" if token is None else "unknown bearer token"
            return refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                           f"{reason}: send 'authorization: Bearer <token>' metadata with a token from the daemon's "
                           "tokens file")
        if method in ADMIN_METHODS and not rights.manage:
            return refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                           f"{method.rsplit('/', 1)[-1]} needs a token with the manage scope "
                           "(\"*\" or manage = true in the tokens file)")
        field = MODEL_FIELDS.get(method)
        if field is None or rights.models is None:
            return with_rights(handler, lambda _: rights)
        if handler.unary_unary:
            return self._checked(handler, field, rights)
        if handler.stream_stream:
            if self.stream_frames_checked and method == DETECT_STREAM:
                return with_rights(handler, lambda _: rights)
            return self._checked_stream(handler, field, rights)
        return refusal(handler, grpc.StatusCode.PERMISSION_DENIED, "this call needs a token for every model")

    def _token_rights(self, handler_call_details: grpc.HandlerCallDetails) -> tuple[str | None, Rights | None]:
        token = bearer_token(handler_call_details.invocation_metadata)
        return token, self.tokens.rights_for(token) if token and self.tokens is not None else None

    def refuses(self, handler_call_details: grpc.HandlerCallDetails) -> bool:
        """Whether the call will be refused whatever its request says (no or an unknown token, or
        a scope the token lacks): sodd.serving.budgets then does not wait for the request's body."""
        method = handler_call_details.method
        if self.tokens is None or method.startswith(OPEN_SERVICES):
            return False
        _, rights = self._token_rights(handler_call_details)
        return rights is None or (method in ADMIN_METHODS and not rights.manage)

    def _without_tokens(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not method.startswith("/sodd.v1.Detector/"):
            return handler

        def rights_of(context: grpc.aio.ServicerContext) -> Rights:
            local = self.allow_remote_management or is_local_peer(context.peer() or "")
            return EVERYTHING if local else Rights(None, False)

        async def admin_check(rights: Rights, context: grpc.aio.ServicerContext) -> None:
            if not rights.manage:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"{method.rsplit('/', 1)[-1]} is accepted only from local clients (the Unix "
                                    "socket or loopback); set allow_remote_management = true or use a tokens file "
                                    "with a manage token")

        return with_rights(handler, rights_of, admin_check if method in ADMIN_METHODS else None)

    async def _check(self, request: Any, field: str, rights: Rights, context: grpc.aio.ServicerContext) -> None:
        model = getattr(request, field) or self.default_model() or ""
        if not rights.may_use(model):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this token has no right to model {quote(model)}")

    def _checked(self, handler: grpc.RpcMethodHandler, field: str, rights: Rights) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            _rights.set(rights)
            await self._check(request, field, rights, context)
            return await outcome(behavior(request, context))

        return grpc.unary_unary_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    def _checked_stream(self, handler: grpc.RpcMethodHandler, field: str, rights: Rights) -> grpc.RpcMethodHandler:
        behavior = handler.stream_stream

        async def checked(request_iterator: AsyncIterator[Any],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _rights.set(rights)

            async def allowed() -> AsyncIterator[Any]:
                async for request in request_iterator:
                    await self._check(request, field, rights, context)
                    yield request

            async with relayed(behavior(allowed(), context)) as responses:
                async for response in responses:
                    yield response

        return grpc.stream_stream_rpc_method_handler(checked, handler.request_deserializer,
                                                     handler.response_serializer)
