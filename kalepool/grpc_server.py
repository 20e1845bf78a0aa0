"""The one gRPC server base every kale-pool service runs on.

`build_server()` makes a `grpc.aio` server with mutual TLS, server reflection, the
standard health service, message size limits and five interceptors, outermost first:

1. telemetry: a per-RPC count and latency (prometheus_client) and one log line per call;
2. caller authorization: the client certificate's common name must be one the service
   allows (PERMISSION_DENIED otherwise); health and reflection answer only the
   `admin_callers` (the operator), since they tell whoever asks what runs where;
3. errors: a :class:`StatusError` (or an exception named in `error_map`) becomes its gRPC
   status with its one-sentence message, cut to `kalepool.bounds.MESSAGE_MAX`
   characters; anything unexpected becomes INTERNAL with a generic message, so no
   traceback, secret or internal detail ever reaches a caller;
4. caller limits: a service named in `caller_limits` admits each call through its check
   of the caller's name (a rate limit: RESOURCE_EXHAUSTED when spent);
5. request bounds: every field of a request within what any service takes
   (`kalepool.bounds.out_of_bounds`), INVALID_ARGUMENT otherwise, before the handler.

With a `health_address`, a second, plaintext server on that address serves the same
health service and nothing else (no reflection, no service RPC): the kubelet's gRPC
probe cannot present a client certificate. It says NOT_SERVING until the server has
started and from the moment it begins to stop (through `drain_seconds` and the grace),
so a draining pod leaves its Service before it refuses calls.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from kalepool.bounds import cut, out_of_bounds
from kalepool.masking import redact
from kalepool.tls import OPERATOR, Identity, server_credentials

log = logging.getLogger("kalepool.grpc")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest request or response a server takes or sends; larger is RESOURCE_EXHAUSTED."""

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_PREFIX = "grpc.reflection."
"""Reflection's services (v1alpha and v1 alike) start so."""


def is_admin_service(service: str) -> bool:
    """Health and reflection: what only the `admin_callers` may call."""
    return service == HEALTH_SERVICE or service.startswith(REFLECTION_PREFIX)


RPC_COUNT = Counter(
    "kalepool_grpc_requests_total",
    "gRPC calls served, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "kalepool_grpc_request_seconds",
    "gRPC call latency in seconds, by service and method.",
    ["service", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class StatusError(Exception):
    """A request that is wrong or cannot be served: its gRPC status and one sentence.

    The message goes to the caller as it is: it must name ids and values a person
    understands and never a secret.
    """

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(StatusError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatusError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StatusError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(StatusError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(StatusError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(StatusError):
    code = grpc.StatusCode.UNAVAILABLE


class Aborted(StatusError):
    code = grpc.StatusCode.ABORTED


class Unauthenticated(StatusError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(StatusError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(StatusError):
    code = grpc.StatusCode.OUT_OF_RANGE


ErrorMap = Mapping[type[BaseException], grpc.StatusCode]
"""Other exception types a service maps to a status (their str() is the message)."""


def _split(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service, name


def caller_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The common name of the caller's client certificate (None without one)."""
    names = context.auth_context().get("x509_common_name")
    for name in names or ():
        return name.decode("utf-8", "replace")
    return None


# --- wrapping handlers -----------------------------------------------------------------

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Around = Callable[[str, grpc.aio.ServicerContext[Any, Any]], "_CallScope"]


class _CallScope:
    """What an interceptor does around one call: before, on error, after."""

    async def enter(self) -> None:
        """Runs before the handler; may abort the call."""

    async def check(self, request: Any) -> None:
        """Runs before the handler with its request (a message; an iterator for a
        client stream); may raise, which `error` then handles."""

    async def error(self, exc: BaseException) -> NoReturn:
        """Runs when the handler raised; must raise (the same or an abort)."""
        raise exc

    def exit(self) -> None:
        """Runs after the call, however it ended."""


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, around: Around
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with `around` run around each call, streaming or not."""

    def unary(inner: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            scope = around(method, context)
            try:
                await scope.enter()
                try:
                    await scope.check(request)
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await scope.error(exc)
            finally:
                scope.exit()

        return call

    def streaming(inner: Streaming) -> Streaming:
        if not inspect.isasyncgenfunction(inner):
            # A streaming handler that writes with context.write() instead of yielding
            # (grpc's own health Watch): awaited like a unary one.
            return cast(Streaming, unary(cast(Unary, inner)))

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            scope = around(method, context)
            try:
                await scope.enter()
                try:
                    await scope.check(request)
                    async for item in inner(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await scope.error(exc)
            finally:
                scope.exit()

        return call

    h = cast(Any, handler)
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(h.unary_unary), h.request_deserializer, h.response_serializer
        )
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(h.stream_unary), h.request_deserializer, h.response_serializer
        )
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(h.unary_stream), h.request_deserializer, h.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        streaming(h.stream_stream), h.request_deserializer, h.response_serializer
    )


class _ScopedInterceptor(grpc.aio.ServerInterceptor):
    @abc.abstractmethod
    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        """What this interceptor does around one call."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler, handler_call_details.method, self.scope)


# --- the three interceptors --------------------------------------------------------------


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class TelemetryInterceptor(_ScopedInterceptor):
    """Counts and times every call and logs one structured line per call."""

    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        return _Telemetry(method, context)


class _Telemetry(_CallScope):
    def __init__(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.service, self.name = _split(method)
        self.context = context
        # Read while the call is live: after a client vanished mid-stream (a killed
        # process), the call's auth context may already be freed, and reading it then
        # crashes the process.
        self.caller = caller_name(context) or "-"
        self.started = time.perf_counter()
        self.failed: BaseException | None = None

    async def error(self, exc: BaseException) -> NoReturn:
        self.failed = exc
        raise exc

    def exit(self) -> None:
        seconds = time.perf_counter() - self.started
        code = self.context.code()
        if isinstance(code, grpc.StatusCode):
            status = code.name
        elif isinstance(code, int):  # the aio context may report the raw number
            status = _CODE_NAMES.get(code, str(code))
        elif self.failed is not None:
            status = grpc.StatusCode.INTERNAL.name
        else:
            status = grpc.StatusCode.OK.name
        # Labels are method names from the call's path: fixed by the services' protos for
        # the handlers that exist, redacted anyway since a metric is read by many.
        service, name = redact(self.service), redact(self.name)
        RPC_COUNT.labels(service, name, status).inc()
        RPC_LATENCY.labels(service, name).observe(seconds)
        log.info(
            "rpc service=%s method=%s code=%s ms=%.1f caller=%s",
            self.service,
            self.name,
            status,
            seconds * 1000,
            self.caller,
        )


class AuthorizationInterceptor(_ScopedInterceptor):
    """Admits a call only when the client certificate's common name is allowed for its
    service, or for that one method (a key ``service/Method`` of `allowed`: a caller
    admitted to a few RPCs only, such as the farmers' web page). Health and reflection
    admit the `admin` names only; other services not named in `allowed` (PoolerService,
    which then demands an API key) admit any certificate of the pool's CA, which mutual
    TLS already demands."""

    def __init__(self, allowed: Mapping[str, Iterable[str]], admin: Iterable[str]) -> None:
        self.allowed = {key: frozenset(names) for key, names in allowed.items()}
        self.admin = frozenset(admin)

    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        service, name = _split(method)
        allowed = self.admin if is_admin_service(service) else self.allowed.get(service)
        per_method = self.allowed.get(f"{service}/{name}")
        if allowed is not None and per_method is not None:
            allowed = allowed | per_method
        return _Authorize(allowed, method, context)


class _Authorize(_CallScope):
    def __init__(
        self,
        allowed: frozenset[str] | None,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self.allowed = allowed
        self.method = method
        self.context = context

    async def enter(self) -> None:
        if self.allowed is None:
            return
        name = caller_name(self.context)
        if name is None:
            await self.context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required"
            )
        if name not in self.allowed:
            log.warning("refused caller=%s method=%s", name, self.method)
            await self.context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {name!r} may not call {'.'.join(_split(self.method))}",
            )


class ErrorInterceptor(_ScopedInterceptor):
    """Domain errors to their status and message; anything else to a generic INTERNAL."""

    def __init__(self, error_map: ErrorMap | None = None) -> None:
        self.error_map = dict(error_map or {})

    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        return _MapErrors(self, method, context)


class _MapErrors(_CallScope):
    def __init__(
        self, owner: ErrorInterceptor, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.owner = owner
        self.method = method
        self.context = context

    async def error(self, exc: BaseException) -> NoReturn:
        await self.context.abort(*status_of(exc, self.owner.error_map, self.method))


def status_of(exc: BaseException, error_map: ErrorMap, method: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a caller gets for `exc` (raised by `method`): a
    StatusError's own, a mapped exception's code with its text, else INTERNAL with an
    incident id (the traceback goes to the log). The one rule for a call's error and for
    the error of one item of a batch call."""
    if isinstance(exc, StatusError):
        return exc.code, cut(redact(exc.message))
    for kind, code in error_map.items():
        if isinstance(exc, kind):
            # a mapped exception's text may quote what it failed on (a URL, a value)
            return code, cut(redact(str(exc)))
    # A bug: the caller learns an incident id, the log gets the traceback. Services
    # must keep secrets out of exceptions too, since the log keeps them.
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the server log"


CallerCheck = Callable[[str], Awaitable[None]]
"""Admits one call of the named caller, or raises a StatusError (a rate limit)."""


class CallerLimitInterceptor(_ScopedInterceptor):
    """Runs the service's caller check (if it has one) before each call."""

    def __init__(self, checks: Mapping[str, CallerCheck]) -> None:
        self.checks = dict(checks)

    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        return _LimitCaller(self.checks.get(_split(method)[0]), context)


class _LimitCaller(_CallScope):
    def __init__(
        self, check: CallerCheck | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self.check_caller = check
        self.caller = caller_name(context) or "-"

    async def enter(self) -> None:
        if self.check_caller is not None:
            await self.check_caller(self.caller)


class BoundsInterceptor(_ScopedInterceptor):
    """Refuses a request with a field out of bounds before its handler sees it."""

    def scope(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> _CallScope:
        return _Bounds()


class _Bounds(_CallScope):
    async def check(self, request: Any) -> None:
        if isinstance(request, Message):
            problem = out_of_bounds(request)
            if problem is not None:
                raise InvalidArgument(problem)


# --- the server ----------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """What one server serves and to whom."""

    address: str  # host:port; port 0 picks a free one
    identity: Identity  # the server's certificate and key
    ca_pem: bytes  # the CA whose client certificates are accepted
    # service full name (or "service/Method", for that method only) -> the client
    # certificate common names allowed to call it
    allowed_callers: Mapping[str, Iterable[str]] = field(default_factory=dict)
    error_map: ErrorMap = field(default_factory=dict)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # who may call health and reflection
    admin_callers: Iterable[str] = (OPERATOR,)
    # service full name -> the check each of its calls passes first (a rate limit)
    caller_limits: Mapping[str, CallerCheck] = field(default_factory=dict)
    # host:port of the plaintext health-only server for the kubelet (None: none)
    health_address: str | None = None
    # on stop, how long the server keeps serving while health says NOT_SERVING
    drain_seconds: float = 0.0


@dataclass
class BuiltServer:
    """A started-or-not server, its bound port and its health service (and the plaintext
    health-only server, when the spec asked for one)."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    drain_seconds: float = 0.0

    async def start(self, services: Iterable[str]) -> None:
        """Start serving and mark the given services (and the server as a whole) SERVING."""
        # A new HealthServicer says SERVING for the whole server: not before it serves.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        for name in ("", *services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING, keep serving `drain_seconds` (load balancers and the
        kubelet see it and send no new calls), then stop (in-flight calls get `grace`
        seconds). The health-only server answers NOT_SERVING until the end."""
        await self.health.enter_graceful_shutdown()
        if self.drain_seconds > 0:
            await asyncio.sleep(self.drain_seconds)
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)


def build_server(
    spec: ServerSpec,
    register: Callable[[grpc.aio.Server], Iterable[str]],
) -> BuiltServer:
    """A grpc.aio server with mTLS, reflection, health and the interceptors; not started.

    `register(server)` adds the service's servicers and returns their full names (for
    reflection and health). Raises RuntimeError when the address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", spec.max_message_bytes),
        ("grpc.max_send_message_length", spec.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(
        interceptors=[
            TelemetryInterceptor(),
            AuthorizationInterceptor(spec.allowed_callers, spec.admin_callers),
            ErrorInterceptor(spec.error_map),
            CallerLimitInterceptor(spec.caller_limits),
            BoundsInterceptor(),
        ],
        options=options,
    )
    names = list(register(server))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    try:
        port = server.add_secure_port(spec.address, server_credentials(spec.identity, spec.ca_pem))
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {spec.address}: {exc}") from None
    if port == 0:
        raise RuntimeError(f"cannot listen on {spec.address}")
    built = BuiltServer(server, port, health, drain_seconds=spec.drain_seconds)
    if spec.health_address is not None:
        built.health_server, built.health_port = _health_server(spec.health_address, health)
    return built


def _health_server(address: str, health: HealthServicer) -> tuple[grpc.aio.Server, int]:
    """A plaintext server on `address` serving `health` alone, and its bound port.

    No interceptors: it carries no service RPC to authorize, bound or count, and the
    kubelet's probe every few seconds would fill the log.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port
