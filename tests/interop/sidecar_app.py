"""Applications that know nothing of the mesh, for tests/interop/sidecar.sh.

    sidecar_app.py http PORT NAME      HTTP/1.1 server: every GET answers NAME, and the
                                       x-forwarded-client-cert it got in `x-saw-xfcc`
    sidecar_app.py banner PORT NAME    server-first TCP: sends "NAME says hello", then echoes
                                       each line upper-cased
    sidecar_app.py banner-client HOST PORT
                                       reads the banner, sends "ping", prints both lines

Servers print "ready" once listening (on every address, as an app in a pod does).
"""

import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http(port, name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = (name + "\n").encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.send_header("x-saw-xfcc", self.headers.get("x-forwarded-client-cert", "-"))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def banner(port, name):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(f"{name} says hello\n".encode())
            for line in self.rfile:
                self.wfile.write(line.upper())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def banner_client(host, port):
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rwb")
        first = f.readline().decode().strip()
        f.write(b"ping\n")
        f.flush()
        second = f.readline().decode().strip()
        print(f"{first} / {second}")


def main():
    cmd, *args = sys.argv[1:]
    if cmd == "http":
        http(int(args[0]), args[1])
    elif cmd == "banner":
        banner(int(args[0]), args[1])
    elif cmd == "banner-client":
        banner_client(args[0], int(args[1]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
