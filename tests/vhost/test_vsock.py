"""vhost-vsock: the library as the guest's virtio-vsock driver, ordinary AF_VSOCK sockets
of the same kernel as the host side.  The mock has the ioctl rules but no vsock core,
so connections run in the lab guests only."""
from __future__ import annotations

import errno
import hashlib
import random
import socket
import threading

import pytest

from pyvfio import errors
from pyvfio.core.uapi import lib
from pyvfio.vhost.vsock import VhostVsock, VsockDriver

pytestmark = pytest.mark.device

CID = 42
MIB = 1 << 20


def _need_real(env):
    if not env.real:
        pytest.skip("needs the kernel's vsock core behind vhost-vsock (lab guest)")


def test_vsock_rules(vhost_env):
    with VhostVsock() as v:
        offered = v.get_features()
        assert offered >> lib.VIRTIO_F_VERSION_1 & 1
        assert offered >> lib.VIRTIO_VSOCK_F_SEQPACKET & 1
        for bad in (0, 1, 2, 0xFFFFFFFF, 1 << 33):
            with pytest.raises(errors.InvalidArgumentError) as ei:
                v.set_guest_cid(bad)
            assert ei.value.errno == errno.EINVAL
        v.set_guest_cid(CID)
        with VhostVsock() as other:
            with pytest.raises(errors.BusyError) as ei:
                other.set_guest_cid(CID)
            assert ei.value.errno == errno.EADDRINUSE
        # rings not set up: the device cannot start
        v.set_features(1 << lib.VIRTIO_F_VERSION_1)
        with pytest.raises(errors.PyvfioError) as ei:
            v.set_running(True)
        assert ei.value.errno == errno.EFAULT
    with VhostVsock(owner=False) as v:
        with pytest.raises(errors.PermissionDeniedError):
            v.set_running(True)


def test_vsock_mebibyte_each_way(vhost_env):
    """Host connects to the guest; 1 MiB each way, SHA-256 compared; close seen on both sides."""
    _need_real(vhost_env)
    rng = random.Random(7)
    h2g = rng.randbytes(MIB)
    g2h = rng.randbytes(MIB)
    result = {}

    def host_side():
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect((CID, 5000))
            s.sendall(h2g)
            got = bytearray()
            while len(got) < MIB:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            result["sha"] = hashlib.sha256(got).hexdigest()
            result["len"] = len(got)

    with VsockDriver(CID) as drv:
        drv.listen(5000)
        t = threading.Thread(target=host_side)
        t.start()
        try:
            conn = drv.accept(5000, timeout=60)
            assert (conn.peer_cid, conn.local_port) == (2, 5000)
            got = conn.recv_exact(MIB, timeout=60)
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(h2g).hexdigest()
            conn.send(g2h, timeout=60)
            # the host closes after reading: SHUTDOWN arrives, the driver answers RST
            assert conn.recv(timeout=60) == b""
        finally:
            t.join(60)
        assert result == {"sha": hashlib.sha256(g2h).hexdigest(), "len": MIB}
        assert conn.state == "closed" and not conn.reset
        print(f"vsock: 1 MiB each way, RX interrupts {drv.rxq.drain_interrupts()}, "
              f"TX kicks {drv.txq.kicks}")


def test_vsock_refusal_both_ways(vhost_env):
    _need_real(vhost_env)
    out = {}

    def host_connect():
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            try:
                s.connect((CID, 5001))
                out["err"] = 0
            except OSError as exc:
                out["err"] = exc.errno

    with VsockDriver(CID) as drv:
        t = threading.Thread(target=host_connect)
        t.start()
        while not drv.refused and t.is_alive():
            try:
                drv._poll(1.0)
            except errors.TimedOutError:
                pass
        t.join(30)
        assert out["err"] == errno.ECONNRESET
        assert len(drv.refused) == 1 and drv.refused[0][0] == 2 and drv.refused[0][2] == 5001
        # the guest connects to a host port nobody listens on: the host answers RST
        with pytest.raises(errors.PyvfioError) as ei:
            drv.connect(5002, timeout=30)
        assert ei.value.errno == errno.ECONNREFUSED


def test_vsock_reset_both_ways(vhost_env):
    _need_real(vhost_env)
    seen = {}
    ready = threading.Event()

    def host_side():
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect((CID, 5003))
            ready.set()
            seen["recv"] = s.recv(10)
            try:
                s.send(b"after reset")
            except OSError as exc:
                seen["errno"] = exc.errno

    with VsockDriver(CID) as drv:
        drv.listen(5003)
        t = threading.Thread(target=host_side)
        t.start()
        conn = drv.accept(5003, timeout=30)
        ready.wait(30)
        conn.send_reset()
        t.join(30)
        # Linux's vsock takes an RST on an established connection as a full peer
        # shutdown (virtio_transport_do_close): end of stream, then EPIPE on send
        assert seen == {"recv": b"", "errno": errno.EPIPE}

        # host resets: it sends data and closes; the guest leaves the data unread, so it
        # does not answer the SHUTDOWN and the host's close timeout sends RST
        def host_close():
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
                s.settimeout(30)
                s.connect((CID, 5003))
                s.sendall(b"unread")
        t = threading.Thread(target=host_close)
        t.start()
        conn = drv.accept(5003, timeout=30)
        t.join(30)
        while not conn.reset:
            drv._poll(30)
        with pytest.raises(errors.PyvfioError) as ei:
            conn.send(b"late")
        assert ei.value.errno == errno.ECONNRESET
