"""The hub's gRPC server (``grpc.aio``), in the hub process, on ``INFERHUB_GRPC_PORT``.

The app's lifespan starts it beside HTTP (same host, same service, same keys) and stops it
before the service's parts close. ``INFERHUB_GRPC_PORT=0`` serves no gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from contract.errors import MalformedRequest
from contract.settings import Settings
from hub.auth import KeyRing
from hub.grpc.convert import decode_message
from hub.grpc.errors import abort
from hub.grpc.proto import grpc_service_pb2 as pb
from hub.grpc.service import InferenceService
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.service import JobService

log = logging.getLogger(__name__)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    def __init__(self, service: JobService, keyring: KeyRing, settings: Settings, version: str):
        self.settings = settings
        self.address = address(settings.host, settings.grpc_port)
        self.server = grpc.aio.server(
            options=[
                # a message as large as an HTTP body may be; larger ones are RESOURCE_EXHAUSTED
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # a second hub on the same port must fail, not share the port unseen
                ("grpc.so_reuseport", 0),
            ]
        )
        servicer = InferenceService(service, keyring, settings, version)
        self.server.add_generic_rpc_handlers((handlers(servicer),))

    async def start(self) -> None:
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError:
            raise RuntimeError(
                f"cannot serve gRPC on {self.address}: the port is in use or the address is not "
                "this machine's; set INFERHUB_GRPC_PORT (0 serves no gRPC)"
            ) from None
        await self.server.start()
        log.info("gRPC (Triton's GRPCInferenceService) on %s", self.address)

    async def stop(self) -> None:
        """Stop taking calls; those running get a moment to end, then are canceled (a bulk job
        of a stream goes on without it)."""
        await self.server.stop(min(2.0, self.settings.shutdown_grace_s / 4))


def handlers(servicer: InferenceService) -> grpc.GenericRpcHandler:
    """Every method of the service, its requests decoded inside the call: bytes that are no
    message are then INVALID_ARGUMENT, as any malformed request (gRPC's own decoding would
    answer UNKNOWN and log a traceback). ``ModelStreamInfer`` decodes each request itself, so
    that a bad one is answered in the stream and the stream goes on."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, response_serializer=_serialize
            )
        else:
            kind = message_factory.GetMessageClass(method.input_type)
            methods[method.name] = grpc.unary_unary_rpc_method_handler(
                _decoding(kind, behaviour), response_serializer=_serialize
            )
    return grpc.method_handlers_generic_handler(service.full_name, methods)


def _decoding(
    kind: type[Message], behaviour: Callable[[Any, Any], Awaitable[Message]]
) -> Callable[[bytes, Any], Awaitable[Message]]:
    async def call(raw: bytes, context: Any) -> Message:
        try:
            request = await decode_body(len(raw) > OFF_LOOP_BYTES, decode_message, kind, raw)
        except MalformedRequest as exc:
            await abort(context, exc)
        return await behaviour(request, context)

    return call


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
