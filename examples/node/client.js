// Call HelloService through the sidecar from Node, three ways: gRPC with @grpc/grpc-js (one client, a deadline
// per call, codes told apart), then Connect and gRPC-web with @connectrpc/connect-node. The schema comes from
// hello.proto at run time (no code generation step). Exits 1 when any call fails, so a script can rely on it.
//   node client.js [addr] [name]        (Node 20 or newer: "engines" in package.json)
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");
const { FileDescriptorSet } = require("protobufjs/ext/descriptor");
const { createFileRegistry, fromBinary } = require("@bufbuild/protobuf");
const { FileDescriptorSetSchema } = require("@bufbuild/protobuf/wkt");
const { createClient, ConnectError, Code } = require("@connectrpc/connect");
const { createConnectTransport, createGrpcWebTransport } = require("@connectrpc/connect-node");

const addr = process.argv[2] || "127.0.0.1:50051";
const name = process.argv[3] ?? "world";
const protoFile = path.join(__dirname, "../../proto/hello/v1/hello.proto");

// gRPC: @grpc/grpc-js with the proto loaded by @grpc/proto-loader.
const hello = grpc.loadPackageDefinition(protoLoader.loadSync(protoFile, { keepCase: true })).hello.v1;

function grpcCall(client, who) {
  return new Promise((resolve) => {
    client.SayHello({ name: who }, { deadline: new Date(Date.now() + 2000) }, (err, reply) => {
      if (!err) return resolve(`grpc: ${reply.message} (code ${reply.code})`);
      process.exitCode = 1;
      const kind = { [grpc.status.INVALID_ARGUMENT]: "bad request", [grpc.status.UNAVAILABLE]: "no backend",
        [grpc.status.DEADLINE_EXCEEDED]: "too slow" }[err.code] || "error";
      resolve(`grpc: ${grpc.status[err.code]} (${kind}): ${err.details}`);
    });
  });
}

// Connect and gRPC-web: @connectrpc/connect-node with the service descriptor built from the same proto.
const fds = FileDescriptorSet.encode(protobuf.loadSync(protoFile).toDescriptor("proto3")).finish();
const HelloService = createFileRegistry(fromBinary(FileDescriptorSetSchema, fds)).getService("hello.v1.HelloService");

async function connectCall(label, transport, who) {
  const client = createClient(HelloService, transport);
  try {
    const reply = await client.sayHello({ name: who }, { timeoutMs: 2000 });
    return `${label}: ${reply.message} (code ${reply.code})`;
  } catch (e) {
    process.exitCode = 1;
    const err = ConnectError.from(e);
    return `${label}: ${Code[err.code]}: ${err.rawMessage}`;
  }
}

(async () => {
  const client = new hello.HelloService(addr, grpc.credentials.createInsecure());
  console.log(await grpcCall(client, name));
  client.close();
  const baseUrl = `http://${addr}`;
  console.log(await connectCall("connect", createConnectTransport({ baseUrl, httpVersion: "1.1" }), name));
  console.log(await connectCall("grpc-web", createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }), name));
})();
