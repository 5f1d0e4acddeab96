#!/usr/bin/env python3
"""Peers for capture.sh (`ringmesh iptables`).

serve NAME=ADDR:PORT ...   listen on each address; to every client, send one line
                           "NAME ORIGINAL-DESTINATION" (SO_ORIGINAL_DST when the connection was
                           redirected, else the address it reached) and close. Prints "ready"
                           once every socket listens.
connect UID HOST PORT      become UID (and GID UID), connect within 3 s, print the line received.
"""
import encodings.idna  # noqa: F401 (loaded before setuid: the new user may not read the stdlib's dir)
import os
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
SOL_IPV6 = 41


def split(hostport):
    host, port = hostport.rsplit(":", 1)
    return host.strip("[]"), int(port)


def show(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def original_dst(conn):
    if conn.family == socket.AF_INET:
        try:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack("!H", raw[2:4])[0]
            return show(socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        except OSError:
            pass
    else:
        try:
            raw = conn.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
            port = struct.unpack("!H", raw[2:4])[0]
            return show(socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
        except OSError:
            pass
    host, port = conn.getsockname()[:2]
    return show(host, port)


def serve(specs):
    socks = []
    for spec in specs:
        name, hostport = spec.split("=", 1)
        host, port = split(hostport)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(16)
        socks.append((name, s))

    def loop(name, s):
        while True:
            conn, _ = s.accept()
            with conn:
                conn.sendall(f"{name} {original_dst(conn)}\n".encode())

    for name, s in socks:
        threading.Thread(target=loop, args=(name, s), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(uid, host, port):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.settimeout(3)
            print(s.makefile().readline().strip())
    except OSError as e:
        print(f"FAIL {e}")
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        connect(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
