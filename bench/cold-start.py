#!/usr/bin/env python3
"""The gateway's cold start: spawns it and polls its port with raw sockets until a proxied request
answers 200, all in this one process (a `curl` per try costs several ms of its own on a busy 2-core
machine, which made the count's steps coarse).

    cold-start.py PORT AUTHORIZATION DIR BINARY [NAME=VALUE...]

Starts BINARY in DIR with the environment plus the NAME=VALUE pairs, asks `GET /api/bench` with the
`Authorization` header until it is answered 200 (at most 5 s), stops it and prints
`cold_start_ms=<exec to the 200> listen_ms=<exec to the first accepted connection>`.
"""
import os
import socket
import subprocess
import sys
import time


def main() -> int:
    port, auth, workdir, binary = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    env = dict(os.environ)
    env.update(pair.split("=", 1) for pair in sys.argv[5:])
    request = f"GET /api/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode()
    with open(os.path.join(workdir, "log"), "wb") as log:
        start = time.perf_counter()
        child = subprocess.Popen([binary], cwd=workdir, env=env, stdout=log, stderr=log)
        listening = None
        status = ""
        try:
            while time.perf_counter() - start < 5:
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                except OSError:
                    time.sleep(0.0002)
                    continue
                if listening is None:
                    listening = time.perf_counter() - start
                answer = b""
                try:
                    with conn:
                        conn.sendall(request)
                        while chunk := conn.recv(65536):
                            answer += chunk
                except OSError:
                    pass
                status = answer[9:12].decode(errors="replace")
                if status == "200":
                    done = time.perf_counter() - start
                    print(f"cold_start_ms={done * 1000:.1f} listen_ms={listening * 1000:.1f}")
                    return 0
                time.sleep(0.0002)
        finally:
            child.terminate()
            child.wait()
    print(f"no 200 within 5 s (last status {status!r})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
