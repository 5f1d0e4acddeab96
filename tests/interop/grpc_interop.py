"""gRPC interop peer for tests/interop/h2.sh: a Python grpcio server and client.

    python grpc_interop.py serve ADDR [--name NAME]
    python grpc_interop.py client TARGET [--authority HOST] CASE

The service is written with generic handlers and identity (bytes) serializers, not generated
from a .proto: a proxy never looks inside gRPC messages, only at HTTP/2 frames, headers,
trailers and the 5-byte message framing, so protobuf payloads would test nothing more of it,
and leaving out codegen keeps the install to one wheel (grpcio) and the test to one file.

Each client CASE exits 0 when every assertion held and 1 (with the reason on stderr) when one
did not; every call carries a deadline, so a proxy that stalls fails the case instead of
hanging it.
"""

import argparse
import queue
import struct
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "ringmesh.interop.Echo"
IDENTITY = {"request_deserializer": None, "response_serializer": None}

STREAM_MESSAGES = 10_000
STREAM_PAYLOAD = 92  # + 8 bytes of sequence number: ~1 MB, many flow-control windows
BIDI_ROUNDS = 200
CLIENT_STREAM_MESSAGES = 1_000
DEADLINE_S = 0.5
SLEEP_BOUND_S = 20.0  # the slow handler waits at most this long for its caller to give up
ERROR_MESSAGE = "no such widget: \u00fcn\u00efc\u00f6de 100% /a?b=c"
ERROR_TRAILERS = (
    ("x-interop-detail", "widget 42, shelf 7"),
    ("x-interop-detail-bin", b"\x00\x01\xfe\xffbinary"),
)
CALL_TIMEOUT_S = 30.0
UP_AUTHORITY = "grpc.interop"  # the host that the unavailable case first checks is served
SPREAD_CALLS = 100
SPREAD_MIN_SHARE = 30  # of SPREAD_CALLS, for each of two servers (round robin gives ~50)


def seq_message(i, size):
    """Message i: its sequence number, then `size` bytes derived from it."""
    return struct.pack(">Q", i) + bytes((i + k) & 0xFF for k in range(size))


def bidi_size(i):
    """Sizes from 1 byte to past one 16 KiB frame, so messages split across DATA frames."""
    return (i * 997) % 20_000 + 1


# ---------------------------------------------------------------------------------------------
# server


def unary(request, context):
    """Echoes the request; request metadata `x-interop-*` comes back as initial metadata."""
    echoed = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-interop-"))
    if echoed:
        context.send_initial_metadata(echoed)
    return request


def server_stream(request, context):
    """Streams STREAM_MESSAGES numbered messages (the request says how many)."""
    (count,) = struct.unpack(">I", request)
    for i in range(count):
        yield seq_message(i, STREAM_PAYLOAD)


def client_stream(request_iterator, context):
    """Answers how many messages arrived and their total size."""
    count = 0
    size = 0
    for message in request_iterator:
        count += 1
        size += len(message)
    return struct.pack(">QQ", count, size)


def bidi_stream(request_iterator, context):
    """Echoes each message as it arrives."""
    for message in request_iterator:
        yield message


SLOW_ENDED = {}  # token -> seconds the slow call lasted before it ended on this side
SLOW_ENDED_LOCK = threading.Lock()


def slow(request, context):
    """Outlives the caller's deadline: waits until the call is over on this side (the
    deadline sent as `grpc-timeout` expired or the caller's reset arrived), bounded, then
    records how long that took under the request's token."""
    start = time.monotonic()
    done = threading.Event()
    context.add_callback(done.set)
    ended = done.wait(SLEEP_BOUND_S)
    with SLOW_ENDED_LOCK:
        SLOW_ENDED[request] = time.monotonic() - start if ended else None
    return request


def slow_report(request, context):
    """How long the slow call with this token lasted here: 8-byte float, empty if not over."""
    with SLOW_ENDED_LOCK:
        if request not in SLOW_ENDED:
            return b""
        lasted = SLOW_ENDED[request]
    return struct.pack(">d", -1.0 if lasted is None else lasted)


def not_found(request, context):
    """Fails with NOT_FOUND, a message that needs percent-encoding, and trailing metadata."""
    context.set_trailing_metadata(ERROR_TRAILERS)
    context.abort(grpc.StatusCode.NOT_FOUND, ERROR_MESSAGE)


def serve(addr, name):
    def who_am_i(request, context):
        """Names this server: tells which one a proxy picked."""
        return name.encode()

    handlers = {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i, **IDENTITY),
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **IDENTITY),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **IDENTITY),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **IDENTITY),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream, **IDENTITY),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, **IDENTITY),
        "SlowReport": grpc.unary_unary_rpc_method_handler(slow_report, **IDENTITY),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found, **IDENTITY),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port(addr) == 0:
        print(f"grpc_interop: cannot listen on {addr}", file=sys.stderr)
        return 2
    server.start()
    print(f"grpc_interop: serving {SERVICE} on {addr} as {name}", flush=True)
    server.wait_for_termination()
    return 0


# ---------------------------------------------------------------------------------------------
# client


class Failed(Exception):
    """An assertion of a case that did not hold."""


def expect(cond, what):
    if not cond:
        raise Failed(what)


def method(channel, kind, name):
    return getattr(channel, kind)(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)


def case_ready(channel, target):
    grpc.channel_ready_future(channel).result(timeout=10)


def case_unary(channel, target):
    call = method(channel, "unary_unary", "Unary")
    payload = b"hello-grpc-interop \x00\xff" * 3
    response, rpc = call.with_call(payload, timeout=CALL_TIMEOUT_S, metadata=(("x-interop-ping", "pong-42"),))
    expect(response == payload, f"unary: echoed {response!r}, sent {payload!r}")
    expect(rpc.code() == grpc.StatusCode.OK, f"unary: status {rpc.code()}")
    initial = dict(rpc.initial_metadata())
    expect(initial.get("x-interop-ping") == "pong-42", f"unary: initial metadata {initial}")


def case_server_stream(channel, target):
    call = method(channel, "unary_stream", "ServerStream")
    received = 0
    for message in call(struct.pack(">I", STREAM_MESSAGES), timeout=CALL_TIMEOUT_S):
        expect(
            message == seq_message(received, STREAM_PAYLOAD),
            f"server stream: message {received} is {message[:16]!r}..., expected sequence {received}",
        )
        received += 1
    expect(received == STREAM_MESSAGES, f"server stream: {received} of {STREAM_MESSAGES} messages arrived")


def case_client_stream(channel, target):
    call = method(channel, "stream_unary", "ClientStream")
    messages = [seq_message(i, bidi_size(i)) for i in range(CLIENT_STREAM_MESSAGES)]
    response = call(iter(messages), timeout=CALL_TIMEOUT_S)
    count, size = struct.unpack(">QQ", response)
    want = (len(messages), sum(len(m) for m in messages))
    expect((count, size) == want, f"client stream: server counted {(count, size)}, sent {want}")


def case_bidi_stream(channel, target):
    """Lock step: message i+1 is sent only after the echo of message i arrived, so the test
    fails if anything on the path holds messages back until the end of the stream."""
    call = method(channel, "stream_stream", "BidiStream")
    echoed = queue.Queue()

    def requests():
        for i in range(BIDI_ROUNDS):
            if i > 0:
                try:
                    echoed.get(timeout=10)
                except queue.Empty:
                    return  # the response loop below reports the missing echo
            yield seq_message(i, bidi_size(i))

    received = 0
    for message in call(requests(), timeout=CALL_TIMEOUT_S):
        expect(
            message == seq_message(received, bidi_size(received)),
            f"bidi: echo {received} is {message[:16]!r}... ({len(message)} bytes)",
        )
        received += 1
        echoed.put(received)
    expect(received == BIDI_ROUNDS, f"bidi: {received} of {BIDI_ROUNDS} echoes arrived")


def case_deadline(channel, target):
    """The caller sees DEADLINE_EXCEEDED on time, and the server sees its call end too (the
    deadline or the caller's reset reached it), instead of working on for nobody."""
    call = method(channel, "unary_unary", "Slow")
    token = f"slow-{time.time_ns()}".encode()
    start = time.monotonic()
    try:
        call(token, timeout=DEADLINE_S)
        raise Failed("deadline: the slow call succeeded")
    except grpc.RpcError as e:
        elapsed = time.monotonic() - start
        expect(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: status {e.code()} ({e.details()!r})")
    expect(
        DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 4.5,
        f"deadline: failed after {elapsed:.2f}s with a {DEADLINE_S}s deadline",
    )
    report = method(channel, "unary_unary", "SlowReport")
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up:
        answer = report(token, timeout=CALL_TIMEOUT_S)
        if answer:
            (lasted,) = struct.unpack(">d", answer)
            expect(0 <= lasted < DEADLINE_S + 2, f"deadline: the server's call lasted {lasted:.2f}s (-1: never ended)")
            return
        time.sleep(0.05)  # polling the server's record of the call, bounded by give_up
    raise Failed("deadline: the server's slow call had not ended 5s after the caller gave up")


def case_error(channel, target):
    call = method(channel, "unary_unary", "NotFound")
    try:
        call(b"widget", timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        expect(e.code() == grpc.StatusCode.NOT_FOUND, f"error: status {e.code()} ({e.details()!r})")
        expect(e.details() == ERROR_MESSAGE, f"error: message {e.details()!r}, expected {ERROR_MESSAGE!r}")
        trailers = tuple((k, v) for k, v in e.trailing_metadata() if k.startswith("x-interop-"))
        expect(trailers == ERROR_TRAILERS, f"error: trailing metadata {trailers}, expected {ERROR_TRAILERS}")
        return
    raise Failed("error: the failing call succeeded")


def case_spread(channel, target):
    """Calls over one channel (one HTTP/2 connection to the first hop) are balanced per call
    over two servers, not pinned to one with the connection."""
    call = method(channel, "unary_unary", "WhoAmI")
    seen = {}
    for _ in range(SPREAD_CALLS):
        name = call(b"", timeout=CALL_TIMEOUT_S).decode()
        seen[name] = seen.get(name, 0) + 1
    expect(
        len(seen) == 2 and min(seen.values()) >= SPREAD_MIN_SHARE,
        f"spread: {SPREAD_CALLS} calls reached {seen}, expected two servers with at least {SPREAD_MIN_SHARE} each",
    )


def case_unavailable(channel, target):
    """A server that cannot be reached is answered by the proxy with a gRPC status
    (UNAVAILABLE with the proxy's reason), not a bare HTTP 5xx that the client has to
    translate. First the same call to a server that is up, through the same target, must
    succeed: a client that cannot reach the proxy at all also sees UNAVAILABLE."""
    with open_channel(target, UP_AUTHORITY) as up:
        try:
            method(up, "unary_unary", "Unary")(b"up?", timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            raise Failed(f"unavailable: {UP_AUTHORITY} through {target} fails too: {e.code()} ({e.details()!r})")
    call = method(channel, "unary_unary", "Unary")
    try:
        call(b"anyone there?", timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        details = e.details() or ""
        expect(e.code() == grpc.StatusCode.UNAVAILABLE, f"unavailable: status {e.code()} ({details!r})")
        expect(
            "Received http2 header with status" not in details and details,
            f"unavailable: a bare HTTP status, no grpc-status and grpc-message ({details!r})",
        )
        return
    raise Failed("unavailable: the call to a server that is down succeeded")


CASES = {
    "ready": case_ready,
    "unary": case_unary,
    "server-stream": case_server_stream,
    "client-stream": case_client_stream,
    "bidi-stream": case_bidi_stream,
    "deadline": case_deadline,
    "error": case_error,
    "spread": case_spread,
    "unavailable": case_unavailable,
}


def open_channel(target, authority):
    options = [("grpc.enable_http_proxy", 0)]  # never through an http_proxy from the environment
    if authority:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(target, options=options)


def client(target, authority, case):
    with open_channel(target, authority) as channel:
        try:
            CASES[case](channel, target)
        except Failed as e:
            print(f"grpc_interop: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            print(f"grpc_interop: {case}: unexpected status {e.code()} ({e.details()!r})", file=sys.stderr)
            return 1
        except grpc.FutureTimeoutError:
            print(f"grpc_interop: {case}: channel to {target} not ready within 10s", file=sys.stderr)
            return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("addr")
    s.add_argument("--name", default="server", help="what WhoAmI answers")
    c = sub.add_parser("client")
    c.add_argument("target")
    c.add_argument("case", choices=sorted(CASES))
    c.add_argument("--authority", help=":authority to send (the host the proxies route by)")
    args = parser.parse_args()
    if args.command == "serve":
        return serve(args.addr, args.name)
    return client(args.target, args.authority, args.case)


if __name__ == "__main__":
    sys.exit(main())
