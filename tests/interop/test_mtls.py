"""A stock grpcio client with a TLS client certificate calling the `inbound` mTLS proxy directly.

Certificates are made with the openssl CLI, as an operator without cert-manager would: a CA, a server certificate
with a SPIFFE ID (URI SAN) and a DNS name, and client certificates with SPIFFE IDs.
"""

import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from conftest import Procs, fresh_ip, wait_http

TD = "spiffe://td.test"
SERVER_NAME = "backend.shop.svc"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(d: Path, name: str, sans: str, eku: str) -> None:
    """NAME.key / NAME.crt signed by the CA in `d`."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={eku}\n"
    )
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    (d / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=interop CA", "-days", "1",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=d,
    )
    issue(d, "server", f"URI:{TD}/ns/shop/sa/backend,DNS:{SERVER_NAME}", "serverAuth")
    issue(d, "python", f"URI:{TD}/ns/shop/sa/python", "clientAuth")
    issue(d, "intruder", f"URI:{TD}/ns/other/sa/intruder", "clientAuth")
    return d


@pytest.fixture(scope="module")
def inbound(pki):
    procs = Procs()
    try:
        app_ip = fresh_ip()
        procs.start("server", "--listen", f"{app_ip}:8080", "--admin", f"{app_ip}:9902", "--id", "py-app")
        wait_http(f"http://{app_ip}:9902/ready")
        ip = fresh_ip()
        procs.start(
            "inbound", "--listen", f"{ip}:8443", "--admin", f"{ip}:9903", "--forward", f"{app_ip}:8080",
            "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
            "--tls-ca", str(pki / "ca.crt"), "--allow", f"{TD}/ns/shop/*",
        )
        wait_http(f"http://{ip}:9903/ready")
        yield {"addr": f"{ip}:8443", "admin": f"http://{ip}:9903"}
    finally:
        procs.stop()


def channel(pki: Path, addr: str, client: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes(),
        certificate_chain=(pki / f"{client}.crt").read_bytes(),
    )
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def test_grpcio_with_a_client_certificate_reaches_the_app_as_its_spiffe_id(pki, inbound, stubs):
    pb2, pb2_grpc = stubs
    with channel(pki, inbound["addr"], "python") as ch:
        stub = pb2_grpc.HelloServiceStub(ch)
        for _ in range(5):
            reply, call = stub.SayHello.with_call(
                pb2.HelloRequest(name="tls"), timeout=5,
                metadata=[("x-hello-sidecar-client-id", f"{TD}/ns/shop/sa/admin")],
            )
            assert reply.message == "Hello, tls!"
            md = dict(call.initial_metadata())
            assert md["x-hello-pod"] == "py-app"
            assert md["x-hello-client-id"] == f"{TD}/ns/shop/sa/python", "the verified ID, not the caller's header"
    with urllib.request.urlopen(inbound["admin"] + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert f'hello_inbound_requests_total{{client_id="{TD}/ns/shop/sa/python",outcome="forwarded"}} 5' in text


def test_grpcio_caller_off_the_allow_list_gets_permission_denied(pki, inbound, stubs):
    pb2, pb2_grpc = stubs
    with channel(pki, inbound["addr"], "intruder") as ch:
        stub = pb2_grpc.HelloServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.SayHello(pb2.HelloRequest(name="tls"), timeout=5)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ns/other/sa/intruder" in e.value.details()


def test_grpcio_without_a_client_certificate_is_refused(pki, inbound, stubs):
    pb2, pb2_grpc = stubs
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    opts = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(inbound["addr"], creds, options=opts) as ch:
        stub = pb2_grpc.HelloServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.SayHello(pb2.HelloRequest(name="tls"), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_nginx_with_ssl_verify_client_is_a_backend_of_the_sidecars_tls(pki, stubs, tmp_path):
    """Stock nginx terminates mTLS (ssl_verify_client on, the sidecar's certificate checked against the CA) and
    grpc_passes to the app; the sidecar checks nginx's SPIFFE ID and presents its own certificate."""
    pb2, pb2_grpc = stubs
    procs = Procs()
    nginx = None
    try:
        app_ip, nginx_ip = fresh_ip(), fresh_ip()
        procs.start("server", "--listen", f"{app_ip}:8080", "--admin", f"{app_ip}:9902", "--id", "behind-nginx")
        wait_http(f"http://{app_ip}:9902/ready")
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy; fastcgi_temp_path {tmp_path}/fcgi;
  uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
  server {{
    listen {nginx_ip}:8443 ssl http2;
    ssl_certificate {pki}/server.crt;
    ssl_certificate_key {pki}/server.key;
    ssl_client_certificate {pki}/ca.crt;
    ssl_verify_client on;
    location / {{
      grpc_set_header x-nginx-client-verify $ssl_client_verify;
      grpc_pass grpc://{app_ip}:8080;
    }}
  }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL)
        sidecar_ip = fresh_ip()
        procs.start(
            "sidecar", "--listen", f"{sidecar_ip}:50051", "--admin", f"{sidecar_ip}:9901",
            "--target", f"static:///{nginx_ip}:8443",
            "--tls-cert", str(pki / "python.crt"), "--tls-key", str(pki / "python.key"),
            "--tls-ca", str(pki / "ca.crt"), "--tls-server-identity", f"{TD}/ns/shop/sa/backend",
        )
        wait_http(f"http://{sidecar_ip}:9901/ready")
        with grpc.insecure_channel(f"{sidecar_ip}:50051") as ch:
            stub = pb2_grpc.HelloServiceStub(ch)
            for _ in range(5):
                reply, call = stub.SayHello.with_call(pb2.HelloRequest(name="nginx"), timeout=5)
                assert reply.message == "Hello, nginx!"
                assert dict(call.initial_metadata())["x-hello-pod"] == "behind-nginx"
        # A sidecar whose certificate nginx does not trust is refused by nginx's client verification. nginx finishes
        # the handshake and answers HTTP 400 ("The SSL certificate error"), which gRPC maps to INTERNAL; the
        # sidecar passes the backend's answer through unchanged.
        bad_ip = fresh_ip()
        other = tmp_path / "other"
        other.mkdir()
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=other)
        openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=other CA", "-days", "1",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
                "-out", "ca.crt", cwd=other)
        issue(other, "stranger", f"URI:{TD}/ns/shop/sa/stranger", "clientAuth")
        procs.start(
            "sidecar", "--listen", f"{bad_ip}:50051", "--admin", f"{bad_ip}:9901",
            "--target", f"static:///{nginx_ip}:8443",
            "--tls-cert", str(other / "stranger.crt"), "--tls-key", str(other / "stranger.key"),
            "--tls-ca", str(pki / "ca.crt"), "--tls-server-identity", f"{TD}/ns/shop/sa/backend",
        )
        wait_http(f"http://{bad_ip}:9901/live")
        with grpc.insecure_channel(f"{bad_ip}:50051") as ch:
            stub = pb2_grpc.HelloServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.SayHello(pb2.HelloRequest(name="nginx"), timeout=5)
            assert e.value.code() == grpc.StatusCode.INTERNAL
            assert "400" in e.value.details()
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        procs.stop()


def test_grpcio_sees_unavailable_naming_the_app_when_it_is_down(pki, stubs):
    pb2, pb2_grpc = stubs
    procs = Procs()
    try:
        ip = fresh_ip()
        procs.start(
            "inbound", "--listen", f"{ip}:8443", "--admin", f"{ip}:9903", "--forward", f"{fresh_ip()}:8080",
            "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
            "--tls-ca", str(pki / "ca.crt"), "--allow", f"{TD}/ns/shop/*",
        )
        wait_http(f"http://{ip}:9903/ready")
        with channel(pki, f"{ip}:8443", "python") as ch:
            with pytest.raises(grpc.RpcError) as e:
                pb2_grpc.HelloServiceStub(ch).SayHello(pb2.HelloRequest(name="tls"), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "inbound proxy: the app at" in e.value.details()
    finally:
        procs.stop()
