"""An OTLP trace receiver for the interop tests (tests/interop/tracing.sh), written against
OpenTelemetry's own generated code (the `opentelemetry-proto` package) rather than ours.

    otlp_receiver.py serve --grpc HOST:PORT --http HOST:PORT --out SPANS.jsonl --ready FILE

serves OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, grpcio) and
OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `Content-Type: application/x-protobuf`) and
writes every span it receives as one JSON line: how it came (`transport`, and the HTTP request's
content type), the resource's `service.name` and attributes, the scope, and the span with its
ids in lower-case hex, its kind as OTLP's name, its attributes as plain values. A request the
receiver cannot take (another path, another content type, a body that does not parse) is
answered with an error and written as a line with `"refused"` (the reason). FILE is written once both servers
listen.

    otlp_receiver.py spans SPANS.jsonl [--rid ID] [--service NAME] [--kind SERVER] [--field F]

prints the spans of the file that match, one JSON object a line, or only field F of each (a
span's key, `attr:NAME` for an attribute, `resource:NAME` for a resource attribute).

    otlp_receiver.py refused SPANS.jsonl

prints the requests the receiver refused, one a line: the path and the reason.

    otlp_receiver.py links SPANS.jsonl ID CLIENT-SERVICE SERVER-SERVICE [--caller SPAN]

exits 0 when the request whose `guid:x-request-id` is ID left exactly two spans, a CLIENT span
from CLIENT-SERVICE and a SERVER span from SERVER-SERVICE, in one trace (a valid, non-zero id),
the server's span the client's child and the client's span the child of SPAN (no parent
without --caller); otherwise it says what is wrong and exits 1.

    otlp_receiver.py expect SPANS.jsonl [--rid ID] [--service NAME] [--kind KIND] FIELD=VALUE...

exits 0 when exactly one span matches and each FIELD (as for `spans --field`) has VALUE as
text; otherwise it says what differs and exits 1.
"""

import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# grpcio and OpenTelemetry's generated code, imported by `serve` alone (the queries read JSON).
grpc = DecodeError = trace_service_pb2 = trace_service_pb2_grpc = trace_pb2 = None


def import_otlp():
    global grpc, DecodeError, trace_service_pb2, trace_service_pb2_grpc, trace_pb2
    import grpc
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.trace.v1 import trace_pb2


def value_of(any_value):
    """An OTLP AnyValue as a plain Python value."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(kvs):
    return {kv.key: value_of(kv.value) for kv in kvs}


class Sink:
    """The JSON-lines file, written by both servers' threads."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record):
        line = json.dumps(record, sort_keys=True)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()

    def export(self, request, transport, **extra):
        """Writes every span of an ExportTraceServiceRequest; returns how many."""
        n = 0
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    record = {
                        "transport": transport,
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "scope": ss.scope.name,
                        "scope_version": ss.scope.version,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                        "attributes": attributes(span.attributes),
                        "status_code": trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    }
                    record.update(extra)
                    self.write(record)
                    n += 1
        return n


class TraceService:
    """`TraceService`'s one method (what the generated `TraceServiceServicer` declares)."""

    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.export(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(sink, path):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive: the proxy sends every export over one connection.
        protocol_version = "HTTP/1.1"

        def answer(self, status, body=b"", content_type="text/plain"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def refuse(self, status, why):
            sink.write({"transport": "http", "refused": why, "path": self.path})
            self.answer(status, why.encode())

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != path:
                return self.refuse(404, f"no OTLP endpoint at {self.path}")
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip() != "application/x-protobuf":
                return self.refuse(415, f"content type {content_type!r} is not application/x-protobuf")
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except DecodeError as e:
                return self.refuse(400, f"body does not parse: {e}")
            sink.export(request, "http", content_type=content_type)
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.answer(200, response, "application/x-protobuf")

        def do_GET(self):
            self.answer(405, b"OTLP/HTTP takes POST\n")

        def log_message(self, *args):
            pass

    return Handler


def host_port(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def serve(args):
    import_otlp()
    sink = Sink(args.out)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(sink), server)
    if server.add_insecure_port(args.grpc) == 0:
        sys.exit(f"otlp_receiver: cannot listen on {args.grpc} for gRPC")
    server.start()
    httpd = ThreadingHTTPServer(host_port(args.http), http_handler(sink, args.http_path))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with open(args.ready, "w", encoding="utf-8") as f:
        f.write(f"grpc {args.grpc}\nhttp {args.http}{args.http_path}\n")
    print(f"otlp_receiver: OTLP/gRPC on {args.grpc}, OTLP/HTTP on {args.http}{args.http_path}", flush=True)
    server.wait_for_termination()


def load(path):
    spans = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if "refused" not in record:
                    spans.append(record)
    except FileNotFoundError:
        pass
    return spans


def field(span, name):
    if name.startswith("attr:"):
        return span["attributes"].get(name[5:])
    if name.startswith("resource:"):
        return span["resource"].get(name[9:])
    return span.get(name)


def select(spans, rid=None, service=None, kind=None):
    return [
        s
        for s in spans
        if (rid is None or s["attributes"].get("guid:x-request-id") == rid)
        and (service is None or s["service"] == service)
        and (kind is None or s["kind"] == kind)
    ]


def spans_cmd(args):
    for s in select(load(args.file), args.rid, args.service, args.kind):
        print(json.dumps(s, sort_keys=True) if args.field is None else field(s, args.field))


def refused_cmd(args):
    with open(args.file, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "refused" in record:
                print(f"{record['path']}: {record['refused']}")


def valid_id(text, digits):
    return len(text) == digits and all(c in "0123456789abcdef" for c in text) and text.strip("0") != ""


def links_cmd(args):
    spans = select(load(args.file), args.rid)
    problems = []
    clients = select(spans, service=args.client, kind="CLIENT")
    servers = select(spans, service=args.server, kind="SERVER")
    if len(spans) != 2 or len(clients) != 1 or len(servers) != 1:
        summary = [(s["service"], s["kind"]) for s in spans]
        problems.append(f"want one CLIENT span from {args.client} and one SERVER span from {args.server}, got {summary}")
    else:
        client, server = clients[0], servers[0]
        if not valid_id(client["trace_id"], 32):
            problems.append(f"trace id {client['trace_id']!r} is not 16 non-zero bytes")
        if client["trace_id"] != server["trace_id"]:
            problems.append(f"two traces: client {client['trace_id']}, server {server['trace_id']}")
        if not (valid_id(client["span_id"], 16) and valid_id(server["span_id"], 16)) or client["span_id"] == server["span_id"]:
            problems.append(f"span ids {client['span_id']!r} and {server['span_id']!r} are not two valid, distinct ids")
        if server["parent_span_id"] != client["span_id"]:
            problems.append(f"server span's parent {server['parent_span_id']!r} is not the client span {client['span_id']}")
        if client["parent_span_id"] != (args.caller or ""):
            problems.append(f"client span's parent {client['parent_span_id']!r}, want {args.caller or 'none (a root span)'!r}")
    for p in problems:
        print(f"    {args.rid}: {p}")
    sys.exit(1 if problems else 0)


def expect_cmd(args):
    spans = select(load(args.file), args.rid, args.service, args.kind)
    who = f"{args.rid} {args.service or ''} {args.kind or ''}".strip()
    if len(spans) != 1:
        print(f"    {who}: {len(spans)} spans, want one")
        sys.exit(1)
    problems = []
    for pair in args.pairs:
        name, _, want = pair.partition("=")
        got = field(spans[0], name)
        if str(got) != want:
            problems.append(f"{name} = {got!r}, want {want!r}")
    for p in problems:
        print(f"    {who}: {p}")
    sys.exit(1 if problems else 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--grpc", required=True, help="HOST:PORT for OTLP/gRPC")
    p.add_argument("--http", required=True, help="HOST:PORT for OTLP/HTTP")
    p.add_argument("--http-path", default="/v1/traces")
    p.add_argument("--out", required=True, help="the JSON-lines file spans go to")
    p.add_argument("--ready", required=True, help="written once both servers listen")
    p.set_defaults(run=serve)
    p = sub.add_parser("spans")
    p.add_argument("file")
    p.add_argument("--rid")
    p.add_argument("--service")
    p.add_argument("--kind")
    p.add_argument("--field")
    p.set_defaults(run=spans_cmd)
    p = sub.add_parser("refused")
    p.add_argument("file")
    p.set_defaults(run=refused_cmd)
    p = sub.add_parser("links")
    p.add_argument("file")
    p.add_argument("rid")
    p.add_argument("client")
    p.add_argument("server")
    p.add_argument("--caller")
    p.set_defaults(run=links_cmd)
    p = sub.add_parser("expect")
    p.add_argument("file")
    p.add_argument("--rid")
    p.add_argument("--service")
    p.add_argument("--kind")
    p.add_argument("pairs", nargs="+", metavar="FIELD=VALUE")
    p.set_defaults(run=expect_cmd)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
