"""A raw HTTP/2 client for hostile tests: it speaks gRPC's framing but never opens its receive
window, so a server can send it headers and trailers, never a message (HTTP/2 flow control)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.settings


def grpc_message(payload: bytes) -> bytes:
    """One gRPC length-prefixed message, uncompressed."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


class NonReadingClient:
    """Its connection comes from `source_host` (any 127.x address is this machine, and the daemon
    tells client hosts apart by address). `answered` holds the calls whose response headers came
    (a handler finished, or a refusal), `ended` how each ended: its grpc-status, or "reset"."""

    def __init__(self, address: str, source_host: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30, source_address=(source_host, 0))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0, h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self._flush()
        self.answered: set[int] = set()
        self.ended: dict[int, str] = {}

    def _flush(self) -> None:
        # Settings and ping acknowledgements only: nothing here ever sends a WINDOW_UPDATE.
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.answered.add(event.stream_id)
                status = dict(event.headers).get("grpc-status")
                if status is not None:  # trailers only: refused before any answer
                    self.ended[event.stream_id] = status
            elif isinstance(event, h2.events.TrailersReceived):
                self.ended[event.stream_id] = dict(event.headers).get("grpc-status", "")
            elif isinstance(event, h2.events.StreamReset):
                self.ended[event.stream_id] = "reset"
        self._flush()

    def call(self, path: str, message: bytes) -> int:
        """Start a unary call and send its one message; its stream id."""
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                        (":authority", "sodd"), ("content-type", "application/grpc"),
                                        ("te", "trailers")])
        body = grpc_message(message)
        while self.conn.local_flow_control_window(stream) < len(body):  # the server's window for us
            self._flush()
            self._read()
        self.conn.send_data(stream, body, end_stream=True)
        self._flush()
        return stream

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout:g} s")
            self._read()

    def close(self) -> None:
        self.sock.close()
