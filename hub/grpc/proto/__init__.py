"""Triton's ``inference.GRPCInferenceService`` protos and their generated stubs (README.md).

The stubs register their descriptors in this pool, not protobuf's default one: a client that
ships its own copy of the same protos (``tritonclient.grpc``, KServe's) can then live in the
same process as the hub without a "duplicate symbol" clash (scripts/gen_grpc.sh).
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
