"""Is a part ready? Ports, HTTP and gRPC health, as the supervisor and `status` ask it."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kalepool.tls import Identity, channel_credentials


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (the settings' form) as (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (e.g. 'address already in use'), or None."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return (error.strerror or str(error)).lower()
    return None


async def http_ok(url: str, wait: float = 2.0) -> bool:
    """Whether ``url`` answers 200."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=wait)) as response,
    ):
        return response.status == 200


async def https_ok(url: str, ca_pem: bytes, wait: float = 2.0) -> bool:
    """Whether ``url`` answers 200 over TLS whose certificate the CA ``ca_pem`` signed
    for the URL's host (as a browser trusting that CA checks it)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=wait)) as response,
    ):
        return response.status == 200


async def grpc_serving(
    address: str,
    identity: Identity,
    ca_pem: bytes,
    server_name: str,
    service: str,
    wait: float = 2.0,
) -> bool:
    """Whether the gRPC health service at ``address`` says ``service`` is SERVING (mTLS
    with ``identity``, the server's certificate checked for ``server_name``)."""
    async with grpc.aio.secure_channel(
        address,
        channel_credentials(identity, ca_pem),
        options=[("grpc.ssl_target_name_override", server_name)],
    ) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=wait
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
