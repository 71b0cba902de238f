"""Call budgets (sodd.serving.budgets) and the access check (sodd.serving.auth) on an in-process grpc.aio server
with a stand-in Detector: each kind of call draws on its own budget, a client host on its own
share, health checks are never refused, a body that does not come is timed out, and management
needs authority."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sodd.config.schema import ServeConfig
from sodd.serving.auth import (
    EVERYTHING,
    Rights,
    TokenFileError,
    TokenInterceptor,
    TokenTable,
    may_manage,
    visible_models,
)
from sodd.serving.budgets import Budget, BudgetInterceptor, peer_host
from sodd.serving.health import HealthServicer
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc

DETECT = "/sodd.v1.Detector/Detect"
TINY = "tiny-token-0123456789abcdef"
MANAGER = "manager-token-0123456789abcdef"
CONFIG = ServeConfig(models=(), model_repository=Path("/nowhere"), max_inference_calls=3, max_calls_per_peer=2,
                     max_management_calls=1, max_health_watches=1, request_body_timeout_seconds=0.5)


class Detector(pb_grpc.DetectorServicer):
    """Answers at once, or holds a call until `release` is set; records the caller's rights."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.rights: list[tuple[frozenset[str] | None, bool]] = []

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        self.rights.append((visible_models(), may_manage()))
        if request.request_id == "hold":
            self.held.set()
            await self.release.wait()
        return pb.DetectResponse(request_id=request.request_id, model=request.model)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        self.held.set()
        await self.release.wait()
        return pb.ListModelsResponse()

    async def DetectStream(self, requests: AsyncIterator[pb.DetectRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DetectStreamResponse]:
        async for request in requests:
            self.rights.append((visible_models(), may_manage()))
            yield pb.DetectStreamResponse(request_id=request.model)


class CountingBudget(Budget):
    """A budget that says when it holds `n` calls."""

    def __init__(self, budget: Budget) -> None:
        super().__init__(budget.name, budget.setting, budget.limit)
        self.changed = asyncio.Event()

    def take(self) -> bool:
        taken = super().take()
        self.changed.set()
        return taken

    async def reach(self, n: int) -> None:
        async def wait() -> None:
            while self.in_use < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), 10)


async def serve(tokens: TokenTable | None, config: ServeConfig = CONFIG,
                stream_frames_checked: bool = False) -> tuple[grpc.aio.Server, str, Detector, BudgetInterceptor]:
    access = TokenInterceptor(tokens, lambda: "tiny", stream_frames_checked=stream_frames_checked)
    budgets = BudgetInterceptor(config, access.refuses)
    budgets.inference = CountingBudget(budgets.inference)
    server = grpc.aio.server(interceptors=[budgets, access])
    detector = Detector()
    pb_grpc.add_DetectorServicer_to_server(detector, server)
    health = HealthServicer(always_answered=("sodd.v1.Detector",))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("sodd.v1.Detector", "tiny"):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", detector, budgets


async def never() -> AsyncIterator[bytes]:
    await asyncio.Event().wait()
    yield b""  # pragma: no cover


def bodyless(channel: grpc.aio.Channel, metadata: tuple = ()) -> Any:
    """A Detect call that sends its headers and never its request."""
    call = channel.stream_unary(DETECT, request_serializer=bytes, response_deserializer=pb.DetectResponse.FromString)
    return call(never(), metadata=metadata)


async def code_details(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_budgets_keep_each_kind_of_call_from_starving_the_others() -> None:
    async def scenario() -> None:
        server, address, detector, budgets = await serve(None)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorStub(channel)
                health = health_pb2_grpc.HealthStub(channel)
                # Two body-less calls take this host's share; a third from the same host is refused by
                # name, before anything reads it.
                held = [bodyless(channel) for _ in range(2)]
                await budgets.inference.reach(2)
                code, details = await code_details(stub.Detect(pb.DetectRequest(model="tiny"), timeout=10))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_calls_per_peer" in details
                assert budgets.per_peer.in_use == {"ipv4:127.0.0.1": 2}
                # Health checks still answer.
                check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                # The body that never comes is timed out, and the places come back.
                for call in held:
                    assert await code_details(call) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                        "request body not received within 0.5 s")
                assert budgets.inference.in_use == 0 and budgets.per_peer.in_use == {}
                answer = await stub.Detect(pb.DetectRequest(model="tiny", request_id="after"), timeout=10)
                assert answer.request_id == "after"

                # Management: one place; a second call is refused by name while the first is held.
                listing = stub.ListModels(pb.ListModelsRequest(), timeout=10)
                await asyncio.wait_for(detector.held.wait(), 10)
                code, details = await code_details(stub.ListModels(pb.ListModelsRequest(), timeout=10))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_management_calls" in details
                # Health watches: one place; health checks are never refused.
                watch = health.Watch(health_pb2.HealthCheckRequest(service="sodd.v1.Detector"))
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                second = health.Watch(health_pb2.HealthCheckRequest())
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await second.read()
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_health_watches" in (refused.value.details() or "")
                for _ in range(20):
                    check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert check.status == health_pb2.HealthCheckResponse.SERVING
                detector.release.set()
                await listing
                watch.cancel()

                # A name is bounded as soon as the request is read: INVALID_ARGUMENT naming the field.
                code, details = await code_details(stub.Detect(pb.DetectRequest(model="m" * 100_000), timeout=10))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("model: 100000 characters")
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_the_global_inference_budget_refuses_by_name() -> None:
    config = dataclasses.replace(CONFIG, max_inference_calls=2, max_calls_per_peer=5)

    async def scenario() -> None:
        server, address, _, budgets = await serve(None, config)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                held = [bodyless(channel) for _ in range(2)]
                await budgets.inference.reach(2)
                code, details = await code_details(bodyless(channel))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert details == ("the inference budget is full: 2 inference calls are in progress "
                                   "(max_inference_calls); retry later")
                for call in held:
                    call.cancel()
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_calls_without_a_known_token_are_refused_without_waiting_for_their_body() -> None:
    tokens = TokenTable.parse(f'"{TINY}" = ["tiny"]\n')

    async def scenario() -> None:
        server, address, _, budgets = await serve(tokens)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                started = asyncio.get_running_loop().time()
                code, _ = await code_details(bodyless(channel))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                code, _ = await code_details(bodyless(channel, (("authorization", "Bearer wrong-token-12345678"),)))
                assert code == grpc.StatusCode.UNAUTHENTICATED
                assert asyncio.get_running_loop().time() - started < 0.5  # not the body timeout
                assert budgets.inference.in_use == 0
        finally:
            await server.stop(None)

    asyncio.run(scenario())


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:127.0.0.1:40000", "ipv4:127.0.0.1"), ("ipv6:[::1]:40000", "ipv6:[::1]"),
    ("ipv6:%5B2001:db8::1%5D:40000", "ipv6:[2001:db8::1]"), ("unix:/run/sodd/sodd.sock", None), ("unix:", None),
])
def test_peer_hosts_ignore_the_port_and_the_unix_socket(peer: str, host: str | None) -> None:
    assert peer_host(peer) == host


# -- rights -------------------------------------------------------------------------------------


def test_token_file_formats() -> None:
    table = TokenTable.parse(f'''
"{"a" * 16}" = "*"
"{"b" * 16}" = ["tiny", "cars"]
"{"c" * 16}" = {{ models = ["tiny"], manage = true }}
"{"d" * 16}" = {{ models = "*" }}
"{"e" * 16}" = {{ manage = true }}
["{"f" * 16}"]
models = ["cars"]
[tokens."{"g" * 16}"]
models = "*"
manage = true
''')
    assert table.rights_for("a" * 16) == EVERYTHING
    assert table.rights_for("b" * 16) == Rights(frozenset({"tiny", "cars"}), False)
    assert table.rights_for("c" * 16) == Rights(frozenset({"tiny"}), True)
    assert table.rights_for("d" * 16) == Rights(None, False)
    assert table.rights_for("e" * 16) == Rights(frozenset(), True)
    assert table.rights_for("f" * 16) == Rights(frozenset({"cars"}), False)
    assert table.rights_for("g" * 16) == EVERYTHING
    assert table.rights_for("h" * 16) is None
    for bad, message in [(f'"{"a" * 16}" = {{ models = ["x"], delete = true }}', "unknown key 'delete'"),
                         (f'"{"a" * 16}" = {{ models = [] }}', "may do nothing"),
                         (f'"{"a" * 16}" = {{ manage = "yes" }}', "manage must be true or false"),
                         (f'"{"a" * 16}" = 3', "expected")]:
        with pytest.raises(TokenFileError, match=message):
            TokenTable.parse(bad)


class FakeContext:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.AbortError(f"{code.name}: {details}")


async def unload(interceptor: TokenInterceptor, peer: str, metadata: tuple = ()) -> str:
    async def served(request: Any, context: Any) -> str:
        return f"unloaded, may_manage={may_manage()}"

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(served)

    call = type("Details", (), {"method": "/sodd.v1.Detector/UnloadModel", "invocation_metadata": metadata})()
    handler = await interceptor.intercept_service(continuation, call)
    try:
        return await handler.unary_unary(pb.UnloadModelRequest(name="tiny"), FakeContext(peer))
    except grpc.aio.AbortError as exc:
        return str(exc)


@pytest.mark.parametrize("peer", ["ipv4:10.1.2.3:5000", "ipv6:[2001:db8::1]:5000", "ipv6:%5B2001:db8::1%5D:5000"])
def test_without_tokens_management_is_for_local_peers_unless_allowed(peer: str) -> None:
    interceptor = TokenInterceptor(None, lambda: None)
    for local in ("unix:/run/sodd/sodd.sock", "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "ipv6:%5B::1%5D:5000"):
        assert asyncio.run(unload(interceptor, local)) == "unloaded, may_manage=True"
    refused = asyncio.run(unload(interceptor, peer))
    assert refused.startswith("PERMISSION_DENIED: UnloadModel is accepted only from local clients")
    interceptor.allow_remote_management = True
    assert asyncio.run(unload(interceptor, peer)) == "unloaded, may_manage=True"


def test_with_tokens_management_needs_the_manage_scope() -> None:
    tokens = TokenTable.parse(f'"{TINY}" = {{ models = "*" }}\n"{MANAGER}" = {{ models = ["tiny"], manage = true }}\n')
    interceptor = TokenInterceptor(tokens, lambda: None)
    remote = "ipv4:10.1.2.3:5000"
    assert asyncio.run(unload(interceptor, remote, (("authorization", f"Bearer {MANAGER}"),))) == \
        "unloaded, may_manage=True"
    refused = asyncio.run(unload(interceptor, "unix:", (("authorization", f"Bearer {TINY}"),)))
    assert refused.startswith("PERMISSION_DENIED: UnloadModel needs a token with the manage scope")
    assert asyncio.run(unload(interceptor, "unix:")).startswith("UNAUTHENTICATED")


def test_the_servicer_sees_the_callers_rights() -> None:
    tokens = TokenTable.parse(f'"{TINY}" = ["tiny"]\n"{MANAGER}" = {{ models = "*", manage = true }}\n')

    async def scenario(stream_frames_checked: bool) -> tuple[list, grpc.StatusCode, list[str]]:
        server, address, detector, _ = await serve(tokens, stream_frames_checked=stream_frames_checked)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorStub(channel)
                await stub.Detect(pb.DetectRequest(), metadata=(("authorization", f"Bearer {TINY}"),), timeout=10)
                await stub.Detect(pb.DetectRequest(), metadata=(("authorization", f"Bearer {MANAGER}"),), timeout=10)
                frames = [pb.DetectRequest(model="tiny"), pb.DetectRequest(model="hidden")]
                stream = stub.DetectStream(iter(frames), metadata=(("authorization", f"Bearer {TINY}"),), timeout=10)
                answers = []
                try:
                    async for answer in stream:
                        answers.append(answer.request_id)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                return detector.rights, code, answers
        finally:
            await server.stop(None)

    rights, code, answers = asyncio.run(scenario(stream_frames_checked=True))
    tiny = (frozenset({"tiny"}), False)
    assert rights == [tiny, (None, True), tiny, tiny]
    # The servicer checks frames itself: the forbidden frame reaches it, the stream goes on.
    assert (code, answers) == (grpc.StatusCode.OK, ["tiny", "hidden"])
    # Until the servicer says it does, a forbidden frame still ends the stream here.
    _, code, answers = asyncio.run(scenario(stream_frames_checked=False))
    assert (code, answers) == (grpc.StatusCode.PERMISSION_DENIED, ["tiny"])
    # Outside any call (in-process use) nothing is narrowed.
    assert (visible_models(), may_manage()) == (None, True)


def test_bodyless_health_checks_are_capped_per_client_host() -> None:
    """Health checks that never send their request cannot fill gRPC's own ceiling from one host:
    beyond max_calls_per_peer they are refused, and a probe from another host still answers."""
    async def scenario() -> None:
        server, address, _, budgets = await serve(None)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.stream_unary("/grpc.health.v1.Health/Check", request_serializer=bytes,
                                            response_deserializer=health_pb2.HealthCheckResponse.FromString)
                two_held = asyncio.Event()
                take = budgets.checks_per_peer.take

                def counted_take(host: str) -> bool:
                    taken = take(host)
                    if budgets.checks_per_peer.in_use.get(host, 0) >= 2:
                        two_held.set()
                    return taken

                budgets.checks_per_peer.take = counted_take  # type: ignore[method-assign]
                held = [call(never()) for _ in range(2)]
                await asyncio.wait_for(two_held.wait(), 10)
                code, details = await code_details(call(never()))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_calls_per_peer" in details
                for pending in held:
                    assert (await code_details(pending))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
                check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await server.stop(None)

    asyncio.run(scenario())
