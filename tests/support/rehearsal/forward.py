"""A byte forwarder between a TCP port and a unix socket: how the rehearsal connects a pod's own
network namespace to the host's loopback, as a cluster's network would (a pod reaching the
registry; the gateway reaching a pod). Runs inside a container (python3 forward.py LISTEN TARGET,
addresses tcp:HOST:PORT or unix:PATH) or in the test process (Forwarder(...).start()).
Standard library only: the containers have nothing but python3."""

from __future__ import annotations

import os
import socket
import sys
import threading


def _address(text: str) -> tuple[int, object]:
    kind, _, rest = text.partition(":")
    if kind == "unix":
        return socket.AF_UNIX, rest
    host, _, port = rest.rpartition(":")
    return socket.AF_INET, (host, int(port))


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Forwarder:
    def __init__(self, listen: str, target: str) -> None:
        family, address = _address(listen)
        self.target = _address(target)
        if family == socket.AF_UNIX and os.path.exists(str(address)):
            os.unlink(str(address))
        self.server = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(address)
        if family == socket.AF_UNIX:
            os.chmod(str(address), 0o666)
        self.server.listen(128)

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.socket(self.target[0], socket.SOCK_STREAM)
                upstream.connect(self.target[1])
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def start(self) -> "Forwarder":
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def close(self) -> None:
        self.server.close()


if __name__ == "__main__":
    Forwarder(sys.argv[1], sys.argv[2]).serve()
