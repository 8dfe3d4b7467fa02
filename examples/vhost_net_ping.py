"""Ping the kernel's own network stack through vhost-net, with a Python virtio-net driver.

Run it in the lab (it needs root, /dev/vhost-net and /dev/net/tun)::

    python3 -m pyvfio lab run -- python3 examples/vhost_net_ping.py

A TAP interface is made with pyroute2 and given 10.99.0.1/24.  The script is
the "guest" at 10.99.0.2: it sends an ARP request through the vhost-net TX
ring, takes the stack's ARP reply from the RX ring, then sends ICMP echo
requests and prints the replies.  The stack asks for the guest's MAC address
too (its own ARP request arrives on RX): the script answers it.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyvfio import errors  # noqa: E402
from pyvfio.vhost import Tap, VirtioNet  # noqa: E402

MAC = bytes.fromhex("52540099aa01")
MY_IP, HOST_IP = socket.inet_aton("10.99.0.2"), socket.inet_aton("10.99.0.1")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def arp(op: int, dst_mac: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    return (dst_mac + MAC + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
            + MAC + MY_IP + target_mac + target_ip).ljust(60, b"\0")


def icmp_echo(dst_mac: bytes, seq: int) -> bytes:
    payload = b"pyvfio vhost-net ping %d" % seq
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x77, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, MY_IP, HOST_IP)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + MAC + b"\x08\x00" + ip + icmp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--count", type=int, default=3)
    args = ap.parse_args()
    try:
        with Tap("pyvfio-ping0", address="10.99.0.1/24") as tap, VirtioNet(tap, size=64) as net:
            net.post_rx()
            net.transmit([arp(1, b"\xff" * 6, bytes(6), HOST_IP)])
            host_mac = None
            replies = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and replies < args.count:
                for f in net.receive(1, timeout=10):
                    etype = f[12:14]
                    if etype == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == HOST_IP:
                        host_mac = f[22:28]
                        print(f"ARP: 10.99.0.1 is at {host_mac.hex(':')} (answered by the kernel)")
                        for seq in range(1, args.count + 1):
                            net.transmit([icmp_echo(host_mac, seq)])
                    elif etype == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] == MY_IP:
                        net.transmit([arp(2, f[6:12], f[22:28], f[28:32])])   # who-has us
                    elif etype == b"\x08\x00" and f[23] == 1 and f[34] == 0:
                        seq = struct.unpack("!H", f[40:42])[0]
                        replies += 1
                        print(f"ICMP echo reply seq={seq} from 10.99.0.1, {len(f)} bytes")
            print(f"{replies}/{args.count} replies; TX kicks {net.txq.kicks}, "
                  f"RX interrupts {net.rxq.drain_interrupts()}")
            return 0 if replies == args.count else 1
    except errors.PyvfioError as exc:
        print(f"vhost_net_ping: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
