"""Triton's ``inference.GRPCInferenceService`` over the one service every transport calls.

Only conversion lives here, as in the V2 HTTP routes: the catalogue's forms come from
``hub/v2/config.py``, inputs are checked by ``hub/validation.py`` before their data is decoded,
``ModelInfer`` is the online lane (``JobService.infer``), ``ModelStreamInfer`` answers each
request of the stream (``hub/grpc/stream.py``). Who may call what is as over HTTP: health and
server metadata for anyone; the rest with a bearer key in the ``authorization`` metadata, of
the ``read`` or ``submit`` scope. Errors become gRPC statuses in ``hub/grpc/errors.py``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from contract.errors import NotSupported
from contract.settings import Settings
from hub.api.health import probe_workers
from hub.auth import KeyRing, Principal, bearer, unauthorized
from hub.grpc import convert
from hub.grpc.errors import abort
from hub.grpc.proto import grpc_service_pb2 as pb
from hub.grpc.proto import grpc_service_pb2_grpc as pb_grpc
from hub.grpc.stream import StreamAnswers
from hub.offload import OFF_LOOP_BYTES, decode_body
from hub.service import JobService
from hub.v2 import config, repository, stats
from hub.v2.codec import require_text
from hub.v2.routes import hub_priority
from hub.validation import check_declared, check_parameters

Req = TypeVar("Req")
Res = TypeVar("Res")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Res]]


def answered(handler: Handler[Req, Res]) -> Handler[Req, Res]:
    """A unary handler whose errors end the call with their gRPC status and message."""

    @functools.wraps(handler)
    async def call(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Res:
        try:
            return await handler(self, request, context)
        except Exception as exc:  # every one, so that no call ends in grpc's bare UNKNOWN
            await abort(context, exc)

    return call


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(
        self, service: JobService, keyring: KeyRing, settings: Settings, version: str
    ) -> None:
        self.service = service
        self.catalogue = service.catalogue
        self.keyring = keyring
        self.settings = settings
        self.version = version

    def caller(self, context: grpc.aio.ServicerContext, scope: str) -> Principal:
        """Who calls, from the ``authorization`` metadata (``Bearer <key>``), as over HTTP."""
        metadata = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        authorization = metadata.get("authorization")
        principal = bearer(self.keyring, authorization if isinstance(authorization, str) else None)
        if principal is None:
            raise unauthorized("send the metadata authorization: Bearer <key>")
        return principal.need(scope)

    # --- health and metadata -----------------------------------------------------------------

    @answered
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @answered
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        workers = await probe_workers(self.catalogue)  # Redis reachable and a worker alive
        return pb.ServerReadyResponse(ready=isinstance(workers, list) and bool(workers))

    @answered
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="inferhub", version=self.version, extensions=config.EXTENSIONS
        )

    @answered
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        self.caller(context, "read")
        entry, _ = await self.catalogue.model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=bool(await self.catalogue.serving(entry["name"])))

    @answered
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        self.caller(context, "read")
        entry, version = await self.catalogue.model(request.name, request.version or None)
        return json_format.ParseDict(config.metadata(entry, version), pb.ModelMetadataResponse())

    @answered
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        self.caller(context, "read")
        entry, version = await self.catalogue.model(request.name, request.version or None)
        triton = config.triton_config(entry, version)
        return json_format.ParseDict({"config": triton}, pb.ModelConfigResponse())

    @answered
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        self.caller(context, "read")
        index = await repository.index(self.catalogue, request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    @answered
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self.caller(context, "admin")
        repository.refuse_load_parameters(dict(request.parameters))
        await repository.load(self.catalogue, request.model_name)
        return pb.RepositoryModelLoadResponse()

    @answered
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self.caller(context, "admin")
        await repository.unload(self.catalogue, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @answered
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        self.caller(context, "read")
        found = await stats.statistics(
            self.catalogue, request.name or None, request.version or None
        )
        return json_format.ParseDict(found, pb.ModelStatisticsResponse())

    # --- inference ---------------------------------------------------------------------------

    async def parse(
        self, request: pb.ModelInferRequest
    ) -> tuple[dict[str, Any], str, convert.InferRequest]:
        """The model entry, its version, and the request checked against it: what it declares
        before its data is decoded (in a thread when the message is large)."""
        entry, version = await self.catalogue.model(
            request.model_name, request.model_version or None
        )

        def inspect(name: str, datatype: str, shape: list[int]) -> None:
            check_declared(entry, version, name, datatype, shape)

        heavy = request.ByteSize() > OFF_LOOP_BYTES
        parsed = await decode_body(heavy, convert.parse_request, request, inspect)
        check_parameters(parsed.parameters, self.settings.max_parameters_bytes)
        require_text(parsed.arrays)
        return entry, version, parsed

    async def infer(
        self,
        entry: dict[str, Any],
        version: str,
        parsed: convert.InferRequest,
        caller: Principal,
    ) -> pb.ModelInferResponse:
        """One request on the online lane, as HTTP's V2 infer runs it."""
        outputs = await self.service.infer(
            entry,
            version,
            parsed.arrays,
            owner=caller.tenant,
            outputs=parsed.outputs,
            priority=hub_priority(parsed.priority),
            timeout_s=parsed.timeout_us / 1e6 if parsed.timeout_us else None,
        )
        return convert.response(entry["name"], version, parsed.id, outputs, raw=parsed.raw)

    @answered
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        caller = self.caller(context, "submit")
        entry, version, parsed = await self.parse(request)
        return await self.infer(entry, version, parsed, caller)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            caller = self.caller(context, "submit")
            self.service.streams.check(caller.tenant)
        except Exception as exc:
            await abort(context, exc)
        with self.service.streams.slot(caller.tenant):
            async with contextlib.aclosing(StreamAnswers(self, caller).serve(requests)) as answers:
                async for answer in answers:
                    yield answer

    # --- what is not served ------------------------------------------------------------------

    async def _no_shared_memory(self, request: Any, context: Any) -> Any:
        raise NotSupported("shared memory is not supported; send the data in the request")

    SystemSharedMemoryStatus = answered(_no_shared_memory)
    SystemSharedMemoryRegister = answered(_no_shared_memory)
    SystemSharedMemoryUnregister = answered(_no_shared_memory)
    CudaSharedMemoryStatus = answered(_no_shared_memory)
    CudaSharedMemoryRegister = answered(_no_shared_memory)
    CudaSharedMemoryUnregister = answered(_no_shared_memory)

    @answered
    async def TraceSetting(self, request: Any, context: Any) -> Any:
        raise NotSupported("trace settings are not supported")

    @answered
    async def LogSettings(self, request: Any, context: Any) -> Any:
        raise NotSupported(
            "log settings are not supported: set INFERHUB_LOG_FORMAT when starting the hub"
        )
