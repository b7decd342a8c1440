"""V2 over gRPC: Triton's ``inference.GRPCInferenceService`` (``server``, ``service``,
``stream``, ``convert``, ``errors``; the protos and generated stubs in ``proto``)."""
