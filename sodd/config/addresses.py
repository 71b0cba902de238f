"""HOST:PORT, the form of every TCP address the daemon listens on (`listen`, `metrics_listen`)."""

from __future__ import annotations


def split_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` into the host and the port; an IPv6 host is written in brackets (`[::1]:50051`)
    and comes back without them. The host may be empty (every interface); the port may be 0 (any
    free port). Raises ValueError naming the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"{text!r} is not HOST:PORT: unbalanced brackets around the host")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """The inverse of split_host_port: IPv6 hosts get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
