#!/usr/bin/env bash
# Regenerate hub/grpc/proto/*_pb2*.py(i) from Triton's .proto files beside them, with the
# grpcio-tools of the test extra (pip install -e '.[test]'). Run from anywhere; commit the result.
#
#   bash scripts/gen_grpc.sh [OUT_DIR]    # OUT_DIR defaults to hub/grpc/proto
#
# Two edits follow protoc, both because the stubs live in a package and share a process with
# clients (tritonclient.grpc, kserve) that ship their own copies of the same protos:
# - imports of the sibling modules are made absolute (protoc writes `import model_config_pb2`);
# - the descriptors go into inferhub's own pool (hub.grpc.proto.POOL) instead of protobuf's
#   default one, where a client's copy of `inference.*` would clash with ours
#   ("duplicate symbol 'inference.ServerLiveRequest'").
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
proto="$root/hub/grpc/proto"
out="${1:-$proto}"
python="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$out"

"$python" -m grpc_tools.protoc -I "$proto" --python_out="$out" --pyi_out="$out" \
    "$proto/grpc_service.proto" "$proto/model_config.proto"
"$python" -m grpc_tools.protoc -I "$proto" --grpc_python_out="$out" "$proto/grpc_service.proto"

sed -i \
    -e 's/^import \(model_config_pb2\|grpc_service_pb2\) as/from hub.grpc.proto import \1 as/' \
    -e 's/^from google\.protobuf import descriptor_pool as _descriptor_pool$/from hub.grpc.proto import POOL/' \
    -e 's/_descriptor_pool\.Default()/POOL/' \
    "$out/grpc_service_pb2.py" "$out/model_config_pb2.py" "$out/grpc_service_pb2_grpc.py" \
    "$out/grpc_service_pb2.pyi"
