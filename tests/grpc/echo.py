"""A real gRPC server and client (grpcio, generic handlers: no generated
code) for tests/grpc.rs.

server PORT_FILE [CERT KEY CLIENT_CA]: serves tg.Echo on a free loopback
port (h2c, or TLS requiring a client certificate signed by CLIENT_CA) and
writes the port to PORT_FILE.
client ADDR AUTHORITY ROOT_PEM: calls the gateway over TLS and prints one
JSON object with what came back.
"""
import json
import sys

import grpc


def server(port_file, tls=None):
    from concurrent import futures

    def unary(request, context):
        md = dict(context.invocation_metadata())
        seen = {k: md.get(k, "") for k in ("x-tenant-id", "x-forwarded-for", "x-forwarded-proto", "x-request-id")}
        context.set_trailing_metadata((("x-echo-trailer", "done"),))
        return json.dumps({"got": request.decode(), "headers": seen}).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such widget: " + request.decode())

    def stream(request, context):
        for i in range(int(request.decode())):
            yield ("item-%d" % i).encode()

    def bidi(requests, context):
        for r in requests:
            yield b"echo:" + r

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tg.Echo", handlers),))
    if tls:
        cert, key, ca = (open(p, "rb").read() for p in tls)
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = s.add_secure_port("127.0.0.1:0", creds)
    else:
        port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os
    os.rename(port_file + ".tmp", port_file)
    s.wait_for_termination()


def client(addr, authority, root_pem):
    creds = grpc.ssl_channel_credentials(open(root_pem, "rb").read())
    opts = [("grpc.ssl_target_name_override", authority), ("grpc.default_authority", authority)]
    out = {}
    with grpc.secure_channel(addr, creds, options=opts) as ch:
        unary = ch.unary_unary("/tg.Echo/Unary")
        body, call = unary.with_call(b"hello", timeout=10)
        out["unary"] = json.loads(body)
        out["unary_trailers"] = dict(call.trailing_metadata())
        try:
            ch.unary_unary("/tg.Echo/Fail")(b"w-42", timeout=10)
            out["fail"] = "no error"
        except grpc.RpcError as e:
            out["fail"] = {"code": e.code().name, "message": e.details()}
        out["stream"] = [m.decode() for m in ch.unary_stream("/tg.Echo/Stream")(b"5", timeout=10)]
        out["bidi"] = [m.decode() for m in ch.stream_stream("/tg.Echo/Bidi")(iter([b"a", b"b", b"c"]), timeout=10)]
        big = b"x" * (3 << 20)
        out["big"] = len(json.loads(unary(big, timeout=20))["got"])
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3:6] if len(sys.argv) > 3 else None)
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4])
