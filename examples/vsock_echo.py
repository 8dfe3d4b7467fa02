"""A vsock echo service in a Python virtio-vsock driver over vhost-vsock.

Run it in the lab (root, /dev/vhost-vsock)::

    python3 -m pyvfio lab run -- python3 examples/vsock_echo.py

The script is a guest with CID 42 whose driver listens on port 7; an
ordinary AF_VSOCK socket of the same kernel connects to 42:7, sends lines and
reads them back upper-cased.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyvfio import errors  # noqa: E402
from pyvfio.vhost.vsock import VsockDriver  # noqa: E402

CID, PORT = 42, 7
LINES = [b"hello from the host\n", b"vhost-vsock from python\n", b"bye\n"]


def client(out: list) -> None:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect((CID, PORT))
        for line in LINES:
            s.sendall(line)
            got = b""
            while not got.endswith(b"\n"):
                got += s.recv(4096)
            out.append(got)


def main() -> int:
    try:
        with VsockDriver(CID) as drv:
            drv.listen(PORT)
            answers: list = []
            t = threading.Thread(target=client, args=(answers,))
            t.start()
            conn = drv.accept(PORT, timeout=30)
            print(f"guest {CID}:{PORT}: connection from {conn.peer_cid}:{conn.peer_port}")
            buf = b""
            while True:
                data = conn.recv(timeout=30)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.send(line.upper() + b"\n")
            t.join(30)
            for a in answers:
                print("host got:", a.decode().rstrip())
            return 0 if answers == [line.upper() for line in LINES] else 1
    except errors.PyvfioError as exc:
        print(f"vsock_echo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
