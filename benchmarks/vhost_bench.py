"""vhost benchmarks: the library's split ring against the same loop in bare Python and in C,
the batching gain, and vsock throughput against a plain AF_VSOCK socket pair.

Run it in the lab (root, vhost-net, tun, vhost-vsock, vsock loopback)::

    python3 -m pyvfio lab run -- python3 benchmarks/vhost_bench.py

Every variant does the same work per frame (see benchmarks/README.md): frames
pre-filled in their slots, one avail publish and one kick per group, a
blocking read of the call eventfd until the group is used.  Each row runs for
``--seconds`` (one run); the ratios are what to look at.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyvfio.core.uapi import lib  # noqa: E402
from pyvfio.vhost import TX, RX, Tap, VhostNet  # noqa: E402
from pyvfio.vhost.net import NET_HDR_LEN  # noqa: E402
from pyvfio.vhost.vsock import VsockDriver  # noqa: E402
from pyvfio.virtio import DeviceMemory, SplitQueue  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TAP = "pyvfio-bench0"
QSZ = 256


def frame_bytes(size: int, i: int) -> bytes:
    return b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x88\xb5" + bytes(
        (i + j) & 0xFF for j in range(14, size))


# ---------------------------------------------------------------- pyvfio split ring
def bench_library(size: int, batch: int, seconds: float) -> float:
    features = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_RING_F_EVENT_IDX)
    with Tap(TAP, create=False) as tap, DeviceMemory() as mem, VhostNet() as v:
        v.set_features(features)
        rxq = SplitQueue(mem, QSZ, index=RX, features=features)
        txq = SplitQueue(mem, QSZ, index=TX, features=features)
        buf = mem.new_buffer(QSZ * 2048)
        slots = []
        for i in range(QSZ):
            r = mem.region(buf, i * 2048, NET_HDR_LEN + size)
            r.write(bytes(NET_HDR_LEN) + frame_bytes(size, i))
            slots.append(r)
        v.set_mem_table(mem)
        v.setup_vring(RX, rxq)
        v.setup_vring(TX, txq)
        v.set_backend(TX, tap)
        v.set_backend(RX, tap)
        add, kick, wait_for = txq.add, txq.kick, txq.wait_for
        frames = 0
        s = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            for _ in range(batch):
                add((slots[s],))
                s = (s + 1) % QSZ
            kick()
            wait_for(batch)
            frames += batch
        dt = time.perf_counter() - t0
        v.set_backend(TX, None)
        v.set_backend(RX, None)
        rxq.close()
        txq.close()
    return frames / dt


# ---------------------------------------------------------------- bare Python
def _ioc(d: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (0xAF << 8) | nr


def bench_bare(size: int, batch: int, seconds: float) -> float:
    """The same ring with struct, mmap, fcntl.ioctl and os.eventfd: no pyvfio at all."""
    W, R = 1, 2
    SET_OWNER, SET_FEATURES, SET_MEM = _ioc(0, 1, 0), _ioc(W, 0, 8), _ioc(W, 3, 8)
    NUM, ADDR, BASE = _ioc(W, 0x10, 8), _ioc(W, 0x11, 40), _ioc(W, 0x12, 8)
    KICK, CALL, BACKEND = _ioc(W, 0x20, 8), _ioc(W, 0x21, 8), _ioc(W, 0x30, 8)
    TUNSETIFF = (W << 30) | (4 << 16) | (ord("T") << 8) | 202
    TUNSETVNETHDRSZ = (W << 30) | (4 << 16) | (ord("T") << 8) | 216
    tap = os.open("/dev/net/tun", os.O_RDWR)
    vh = os.open("/dev/vhost-net", os.O_RDWR)
    fds = [tap, vh]
    try:
        fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH22x", TAP.encode(), 0x0002 | 0x1000 | 0x4000))
        fcntl.ioctl(tap, TUNSETVNETHDRSZ, struct.pack("i", 12))
        fcntl.ioctl(vh, SET_OWNER)
        fcntl.ioctl(vh, SET_FEATURES, struct.pack("Q", (1 << 32) | (1 << 29)))
        ring_bytes = 64 * 1024
        total = ring_bytes + QSZ * 2048
        mfd = os.memfd_create("bare", os.MFD_CLOEXEC)
        fds.append(mfd)
        os.ftruncate(mfd, total)
        mem = mmap.mmap(mfd, total)
        import ctypes
        base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        gpa = 0x100000
        fcntl.ioctl(vh, SET_MEM, struct.pack("II4Q", 1, 0, gpa, total, base, 0))
        kick, call = os.eventfd(0), os.eventfd(0)
        fds += [kick, call]
        for q in (0, 1):
            off = 0 if q == 1 else 16384
            other = [os.eventfd(0), os.eventfd(0)] if q == 0 else [kick, call]
            if q == 0:
                fds += other
            fcntl.ioctl(vh, NUM, struct.pack("II", q, QSZ))
            fcntl.ioctl(vh, BASE, struct.pack("II", q, 0))
            fcntl.ioctl(vh, ADDR, struct.pack("II4Q", q, 0, base + off, base + off + 8192,
                                              base + off + 4096, 0))
            fcntl.ioctl(vh, KICK, struct.pack("Ii", q, other[0]))
            fcntl.ioctl(vh, CALL, struct.pack("Ii", q, other[1]))
            fcntl.ioctl(vh, BACKEND, struct.pack("Ii", q, tap))
        for i in range(QSZ):
            o = ring_bytes + i * 2048
            mem[o:o + 12 + size] = bytes(12) + frame_bytes(size, i)
        pack, unpack = struct.pack_into, struct.unpack_from
        avail_idx = last_used = 0
        used_event_off = 4096 + 4 + 2 * QSZ
        avail_event_off = 8192 + 4 + 8 * QSZ
        frames = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        p = select.poll()
        p.register(call, select.POLLIN)
        while time.perf_counter() < end:
            for i in range(batch):
                d = (avail_idx + i) % QSZ
                pack("<QIHH", mem, 16 * d, gpa + ring_bytes + d * 2048, 12 + size, 0, 0)
                pack("<H", mem, 4096 + 4 + 2 * d, d)
            old = avail_idx
            avail_idx = (avail_idx + batch) & 0xFFFF
            pack("<H", mem, 4096 + 2, avail_idx)          # x86 only: no fence available here
            ev = unpack("<H", mem, avail_event_off)[0]
            if ((avail_idx - ev - 1) & 0xFFFF) < ((avail_idx - old) & 0xFFFF):
                os.eventfd_write(kick, 1)
            while last_used != avail_idx:
                pack("<H", mem, used_event_off, last_used)
                idx = unpack("<H", mem, 8194)[0]
                if idx != last_used:
                    last_used = idx
                    continue
                os.eventfd_read(call)
            frames += batch
        dt = time.perf_counter() - t0
        fcntl.ioctl(vh, BACKEND, struct.pack("Ii", 0, -1))
        fcntl.ioctl(vh, BACKEND, struct.pack("Ii", 1, -1))
        mem.close()
        return frames / dt
    finally:
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------- C
def bench_c(size: int, batch: int, seconds: float, exe: str) -> float:
    out = subprocess.run([exe, TAP, str(size), str(batch), str(seconds)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[1])


def build_c() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("no C compiler")
    exe = os.path.join(tempfile.mkdtemp(), "vhost_net_bench")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "vhost_net_bench.c")], check=True)
    return exe


# ---------------------------------------------------------------- vsock
def bench_vsock_library(total: int) -> float:
    data = os.urandom(1 << 20)
    with VsockDriver(42) as drv:
        drv.listen(6000)
        res = {}

        def host():
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
                s.connect((42, 6000))
                t0 = time.perf_counter()
                for _ in range(total >> 20):
                    s.sendall(data)
                res["t0"] = t0
        t = threading.Thread(target=host)
        t.start()
        conn = drv.accept(6000, timeout=30)
        got = 0
        while got < total:
            got += len(conn.recv(1 << 20, timeout=30))
        dt = time.perf_counter() - res.get("t0", time.perf_counter())
        t.join()
        conn.recv(timeout=30)
    return total / dt / 1e6


def bench_vsock_loopback(total: int) -> float:
    data = os.urandom(1 << 20)
    srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    srv.bind((socket.VMADDR_CID_ANY, 6001))
    srv.listen(1)
    res = {}

    def client():
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.connect((1, 6001))               # VMADDR_CID_LOCAL: vsock_loopback
            res["t0"] = time.perf_counter()
            for _ in range(total >> 20):
                s.sendall(data)
    t = threading.Thread(target=client)
    t.start()
    c, _ = srv.accept()
    got = 0
    while got < total:
        got += len(c.recv(1 << 20))
    dt = time.perf_counter() - res["t0"]
    t.join()
    c.close()
    srv.close()
    return total / dt / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--vsock-mib", type=int, default=16)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for m in ("vhost_net", "tun", "vhost_vsock", "vsock_loopback"):
        subprocess.run(["modprobe", m], stderr=subprocess.DEVNULL)
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("add", ifname=TAP, kind="tuntap", mode="tap",
                 ifr={"no_pi": True, "vnet_hdr": True, "one_queue": False, "multi_queue": False})
        idx = ipr.link_lookup(ifname=TAP)[0]
        with open(f"/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6", "w") as f:
            f.write("1")
        ipr.link("set", index=idx, state="up")
    rows = {}
    try:
        exe = build_c()
        for size in (64, 1514):
            lib64 = bench_library(size, 64, args.seconds)
            bare64 = bench_bare(size, 64, args.seconds)
            c64 = bench_c(size, 64, args.seconds, exe)
            lib1 = bench_library(size, 1, args.seconds)
            rows[size] = dict(pyvfio_64=lib64, bare_64=bare64, c_64=c64, pyvfio_1=lib1)
            print(f"vhost-net TX {size} B, batch 64: pyvfio {lib64:,.0f} frames/s, bare Python "
                  f"{bare64:,.0f}, C {c64:,.0f}  ->  pyvfio/C {lib64 / c64:.2f}, "
                  f"pyvfio/bare {lib64 / bare64:.2f}", flush=True)
            print(f"vhost-net TX {size} B, pyvfio batch 1: {lib1:,.0f} frames/s  ->  batching gain "
                  f"(64 vs 1 per kick) {lib64 / lib1:.2f}x", flush=True)
    finally:
        with IPRoute() as ipr:
            ipr.link("del", ifname=TAP)
    total = args.vsock_mib << 20
    vl = bench_vsock_library(total)
    vp = bench_vsock_loopback(total)
    rows["vsock"] = dict(pyvfio_MBps=vl, loopback_MBps=vp)
    print(f"vsock host->guest {args.vsock_mib} MiB: pyvfio driver {vl:.1f} MB/s, AF_VSOCK loopback "
          f"pair {vp:.1f} MB/s  ->  ratio {vl / vp:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kernel": os.uname().release, "seconds": args.seconds, "rows": rows}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
