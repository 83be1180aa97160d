"""A stock Python grpcio client, with stubs generated from hello.proto, calling through the sidecar."""

import time

import grpc


def test_say_hello_succeeds_over_one_reused_channel(cluster, stubs):
    pb2, pb2_grpc = stubs
    with grpc.insecure_channel(cluster["sidecar"]) as channel:
        stub = pb2_grpc.HelloServiceStub(channel)
        pods = set()
        for _ in range(20):
            reply, call = stub.SayHello.with_call(pb2.HelloRequest(name="python"), timeout=5)
            assert reply.message == "Hello, python!"
            assert reply.code == 200
            pods.add(dict(call.initial_metadata())["x-hello-pod"])
        assert pods == {"py-0", "py-1"}, "one channel, calls spread over both pods"


def test_empty_name_is_invalid_argument_with_the_backend_message(cluster, stubs):
    pb2, pb2_grpc = stubs
    with grpc.insecure_channel(cluster["sidecar"]) as channel:
        stub = pb2_grpc.HelloServiceStub(channel)
        try:
            stub.SayHello(pb2.HelloRequest(name=""), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.details() == "name is required"
            assert dict(e.trailing_metadata() or ()).get("x-hello-pod") in {"py-0", "py-1"}
        else:
            raise AssertionError("an empty name must fail")


def test_a_deadline_holds_against_a_hung_pod(cluster, stubs):
    pb2, pb2_grpc = stubs
    with grpc.insecure_channel(cluster["hung_sidecar"]) as channel:
        stub = pb2_grpc.HelloServiceStub(channel)
        start = time.monotonic()
        try:
            stub.SayHello(pb2.HelloRequest(name="python"), timeout=1)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            raise AssertionError("a hung pod must not answer")
        assert time.monotonic() - start < 5


def test_unknown_method_is_unimplemented(cluster):
    with grpc.insecure_channel(cluster["sidecar"]) as channel:
        call = channel.unary_unary("/other.v1.Other/Call")
        try:
            call(b"", timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED
        else:
            raise AssertionError("unknown methods must be UNIMPLEMENTED")
