"""Opening a channel to the daemon: plain, TLS or mutual TLS, over TCP or a `unix:` socket, with an
optional bearer token sent on every call."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc


class _CallDetails(
        collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                "compression")),
        grpc.ClientCallDetails):
    pass


def _with_token(metadata: Any, token: str) -> list[tuple[str, str]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    # An interceptor rather than call credentials: grpc sends call credentials only over TLS, and
    # tokens are also used over Unix sockets.
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, _with_token(d.metadata, self._token), d.credentials,
                            d.wait_for_ready, getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(client_call_details), request_iterator)


class _AioBearerToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                      grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(d.method, d.timeout, _with_token(d.metadata, self._token),
                                          d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001, ANN201
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # noqa: ANN001, ANN201
        return await continuation(self._details(client_call_details), request_iterator)


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def tls_credentials(tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                    tls_key: str | Path | None = None) -> grpc.ChannelCredentials | None:
    """TLS when any file is given: `tls_ca` checks the daemon (system roots without it), `tls_cert` and
    `tls_key` are this client's certificate for mutual TLS."""
    if not (tls_ca or tls_cert or tls_key):
        return None
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together: give both for mutual TLS, or neither")
    return grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))


def open_channel(address: str, options: Sequence[tuple[str, Any]] = (), *, token: str | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> grpc.Channel:
    """A blocking channel. `address` is HOST:PORT or unix:/path/to/socket."""
    credentials = tls_credentials(tls_ca, tls_cert, tls_key)
    channel = (grpc.secure_channel(address, credentials, options=list(options)) if credentials is not None
               else grpc.insecure_channel(address, options=list(options)))
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


def open_aio_channel(address: str, options: Sequence[tuple[str, Any]] = (), *, token: str | None = None,
                     tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                     tls_key: str | Path | None = None) -> grpc.aio.Channel:
    credentials = tls_credentials(tls_ca, tls_cert, tls_key)
    interceptors = [_AioBearerToken(token)] if token else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=list(options), interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
