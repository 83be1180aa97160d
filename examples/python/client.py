"""Call HelloService through the sidecar with stock grpcio: one channel, a deadline per call, codes told apart.

    python -m grpc_tools.protoc -I ../../proto --python_out=. --grpc_python_out=. hello/v1/hello.proto
    python client.py [--addr 127.0.0.1:50051] [--name world]
"""

import argparse
import sys

import grpc

from hello.v1 import hello_pb2, hello_pb2_grpc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--name", default="world")
    ap.add_argument("--timeout", type=float, default=2.0, help="deadline of the call, in seconds")
    args = ap.parse_args()
    with grpc.insecure_channel(args.addr) as channel:  # plaintext h2c to the local sidecar
        stub = hello_pb2_grpc.HelloServiceStub(channel)
        try:
            reply, call = stub.SayHello.with_call(hello_pb2.HelloRequest(name=args.name), timeout=args.timeout)
        except grpc.RpcError as e:
            kind = {
                grpc.StatusCode.INVALID_ARGUMENT: "bad request",
                grpc.StatusCode.UNAVAILABLE: "no backend available",
                grpc.StatusCode.DEADLINE_EXCEEDED: "too slow",
            }.get(e.code(), "error")
            print(f"{e.code().name} ({kind}): {e.details()}")
            return 1
        pod = dict(call.initial_metadata()).get("x-hello-pod", "-")
        print(f"{reply.message} (code {reply.code}, pod {pod})")
        return 0


if __name__ == "__main__":
    sys.exit(main())
