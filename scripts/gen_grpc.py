"""Regenerate the Open Inference Protocol's gRPC modules from app/serving/grpc/*.proto.

    python scripts/gen_grpc.py

grpcio-tools writes ``grpc_predict_v2_pb2.py`` (messages), ``.pyi`` (their types) and
``grpc_predict_v2_pb2_grpc.py`` (the service) beside the proto; they are committed, so
serving needs no protoc. One change is made to what protoc writes: the messages go into a
descriptor pool of their own, not protobuf's default one. Triton's client defines the same
messages (package ``inference``) in the default pool, and two files defining one symbol there
cannot be imported into one process ("duplicate symbol 'inference.ServerLiveRequest'");
with a pool of its own, modellane's modules and ``tritonclient.grpc`` live side by side (the
test suite imports both). Only message and service names travel on the wire, never the pool.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = Path("app/serving/grpc")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = (
    "# modellane: a pool of its own, so that tritonclient.grpc (the same symbols in the\n"
    "# default pool) can be imported beside this module (scripts/gen_grpc.py).\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def main() -> int:
    protos = sorted((ROOT / PROTO_DIR).glob("*.proto"))
    for proto in protos:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
             "--pyi_out=.", "--grpc_python_out=.", str(proto.relative_to(ROOT))],
            check=True, cwd=ROOT,
        )  # fmt: skip
        messages = proto.with_name(proto.stem + "_pb2.py")
        text = messages.read_text()
        if text.count("DESCRIPTOR = " + _DEFAULT_POOL) != 1:
            raise SystemExit(f"{messages}: protoc's output changed; update scripts/gen_grpc.py")
        messages.write_text(text.replace("DESCRIPTOR = " + _DEFAULT_POOL, _OWN_POOL))
        print(f"generated from {proto.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
