"""Statuses the pool service answers beyond those `kalepool.grpc_server` defines."""

from __future__ import annotations

import grpc

from kalepool.grpc_server import StatusError


class Unauthenticated(StatusError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(StatusError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(StatusError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(StatusError):
    code = grpc.StatusCode.UNIMPLEMENTED
