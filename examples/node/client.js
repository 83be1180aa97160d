// Call HelloService through the sidecar from Node, three ways: gRPC with @grpc/grpc-js (one client, a
// deadline per call, codes told apart), Connect with JSON over fetch, and gRPC-web over fetch.
//   node client.js [addr] [name]
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const addr = process.argv[2] || "127.0.0.1:50051";
const name = process.argv[3] ?? "world";

const def = protoLoader.loadSync(path.join(__dirname, "../../proto/hello/v1/hello.proto"), { keepCase: true });
const hello = grpc.loadPackageDefinition(def).hello.v1;

function grpcCall(client, who) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 2000);
    const call = client.SayHello({ name: who }, { deadline }, (err, reply) => {
      if (err) {
        const kind = { [grpc.status.INVALID_ARGUMENT]: "bad request", [grpc.status.UNAVAILABLE]: "no backend",
          [grpc.status.DEADLINE_EXCEEDED]: "too slow" }[err.code] || "error";
        resolve(`grpc: ${grpc.status[err.code]} (${kind}): ${err.details}`);
      } else {
        resolve(`grpc: ${reply.message} (code ${reply.code})`);
      }
    });
    void call;
  });
}

async function connectCall(who) {
  const res = await fetch(`http://${addr}/hello.v1.HelloService/SayHello`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": "2000" },
    body: JSON.stringify({ name: who }),
  });
  const body = await res.json();
  return res.ok ? `connect: ${body.message} (code ${body.code})` : `connect: HTTP ${res.status} ${body.code}: ${body.message}`;
}

async function grpcWebCall(who) {
  // HelloRequest{name} encoded by hand: field 1, length-delimited.
  const msg = Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(who)]), Buffer.from(who)]);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
  const res = await fetch(`http://${addr}/hello.v1.HelloService/SayHello`, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
    body: frame,
  });
  const buf = Buffer.from(await res.arrayBuffer());
  let status = res.headers.get("grpc-status"), message = res.headers.get("grpc-message");
  let reply = null;
  for (let i = 0; i + 5 <= buf.length; ) {
    const len = buf.readUInt32BE(i + 1), payload = buf.subarray(i + 5, i + 5 + len);
    if (buf[i] & 0x80) {
      for (const line of payload.toString().split("\r\n")) {
        const [k, v] = line.split(": ");
        if (k === "grpc-status") status = v;
        if (k === "grpc-message") message = decodeURIComponent(v);
      }
    } else {
      reply = payload.subarray(2, 2 + payload[1]).toString(); // field 1 (message)
    }
    i += 5 + len;
  }
  return status === "0" ? `grpc-web: ${reply}` : `grpc-web: status ${status}: ${decodeURIComponent(message || "")}`;
}

(async () => {
  const client = new hello.HelloService(addr, grpc.credentials.createInsecure());
  console.log(await grpcCall(client, name));
  console.log(await connectCall(name));
  console.log(await grpcWebCall(name));
  client.close();
})();
