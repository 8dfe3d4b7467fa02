#!/usr/bin/env python3
"""4 KiB virtio-blk IOPS through vhost-vdpa: the library's driver against the same loop in C.

Usage (in a lab guest, as root)::

    python3 -m pyvfio lab run --kernel full -- python3 benchmarks/vdpa_bench.py [--seconds S]
                                                                  [--json FILE]

Two devices, each created over the vdpa netlink family:

* ``vdpa_sim``: the kernel's block simulator (``vdpasim_blk``);
* ``vduse``: :class:`pyvfio.vdpa.vduse.VduseBlk`, the device side served by a
  thread of this process (memory backed).

For each, queue depth 1 and 32, 4 KiB writes and reads.  The Python loop and
``benchmarks/vdpa_blk_bench.c`` (compiled here with ``cc``) do the same work
per batch: the requests' descriptor chains (header, 4 KiB, status) made
available, one avail publish and one kick, a blocking read of the call
eventfd until the batch is used.  The C program opens the same
``/dev/vhost-vdpa-N`` after the Python run closed it.  For VDUSE the device
side is Python in both runs (in the C run it has the interpreter to itself;
in the Python run it shares it with the driver).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyvfio.core import syscalls  # noqa: E402
from pyvfio.core.uapi import lib  # noqa: E402
from pyvfio.vdpa.device import VhostVdpa, vhost_vdpa_path  # noqa: E402
from pyvfio.vdpa.netlink import Vdpa  # noqa: E402
from pyvfio.vdpa.vduse import VduseBlk  # noqa: E402
from pyvfio.virtio.queue import SplitQueue  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)


def python_loop(name: str, op: str, qd: int, seconds: float) -> Dict[str, float]:
    """The library's driver: the same batches as the C loop."""
    with VhostVdpa(name) as dev:
        features = dev.negotiate(dev.get_features() & BASE)
        mem = dev.iotlb_memory(0)
        mem.new_buffer(1 << 20)
        q = SplitQueue(mem, 128, features=features)
        dev.setup_vring(0, q)
        dev.driver_ok()
        reqs = []
        for i in range(qd):
            hdr = mem.alloc(16, 16)
            data = mem.alloc(4096, 4096)
            status = mem.alloc(1, 1)
            t = lib.VIRTIO_BLK_T_OUT if op == "write" else lib.VIRTIO_BLK_T_IN
            hdr.write(t.to_bytes(4, "little") + bytes(4) + (8 * i).to_bytes(8, "little"))
            data.write(b"\x5a" * 4096)
            reqs.append(((hdr, data), (status,)) if op == "write" else ((hdr,), (data, status)))
        add, kick, wait_for = q.add, q.kick, q.wait_for
        done = 0
        start = time.perf_counter()
        end = start + seconds
        while True:
            for readable, writable in reqs:
                add(readable, writable)
            kick()
            wait_for(qd, 10)
            done += qd
            now = time.perf_counter()
            if now >= end:
                break
        errors = sum(r[1][-1].read(0, 1)[0] != lib.VIRTIO_BLK_S_OK for r in reqs)
    return {"requests": done, "seconds": now - start, "iops": done / (now - start),
            "errors": errors}


def c_loop(exe: str, name: str, op: str, qd: int, seconds: float) -> Dict[str, float]:
    path = vhost_vdpa_path(name)
    out = subprocess.run([exe, path, op, str(qd), str(seconds)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def build_c(tmp: str) -> str:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise SystemExit("no C compiler (cc) to build the baseline")
    exe = os.path.join(tmp, "vdpa_blk_bench")
    subprocess.run([cc, "-O2", "-o", exe, str(HERE / "vdpa_blk_bench.c")], check=True)
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json")
    ap.add_argument("--targets", default="vdpa_sim,vduse")
    args = ap.parse_args()
    for m in ("vdpa_sim_blk", "vhost_vdpa", "vduse"):
        try:
            syscalls.modprobe(m)
        except OSError:
            pass
    results: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp, Vdpa() as nl:
        exe = build_c(tmp)
        for target in args.targets.split(","):
            name = f"bench-{target}"
            served = VduseBlk(name, size=64 << 20) if target == "vduse" else None
            nl.dev_add(name, "vduse" if served else "vdpasim_blk")
            try:
                for qd in (1, 32):
                    for op in ("write", "read"):
                        py = python_loop(name, op, qd, args.seconds)
                        c = c_loop(exe, name, op, qd, args.seconds)
                        row = {"target": target, "op": op, "queue_depth": qd,
                               "python_iops": round(py["iops"]), "c_iops": round(c["iops"]),
                               "ratio": round(py["iops"] / c["iops"], 3),
                               "errors": py["errors"] + c["errors"]}
                        results.append(row)
                        print(f"{target:9} {op:5} qd {qd:2}: pyvfio {row['python_iops']:>8} IOPS"
                              f"   C {row['c_iops']:>8} IOPS   ratio {row['ratio']:.3f}",
                              flush=True)
            finally:
                nl.dev_del(name)
                if served is not None:
                    served.close()
    if args.json:
        Path(args.json).write_text(json.dumps({
            "kernel": platform.release(), "python": platform.python_version(),
            "seconds": args.seconds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
