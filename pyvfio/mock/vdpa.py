"""Family ``vdpa``: the vdpa generic-netlink family and ``/dev/vhost-vdpa-N`` nodes.

Management devices ``vdpasim_net`` and ``vdpasim_blk`` create devices on
``VDPA_CMD_DEV_NEW``; each device gets a sysfs directory under
``bus/vdpa/devices`` and a vhost-vdpa node.  The nodes follow the state rules
measured on the 6.12 kernels:

* ``VHOST_VDPA_SET_STATUS`` clearing a bit without a reset to 0: EINVAL,
  status unchanged;
* ``VHOST_SET_FEATURES`` once FEATURES_OK is set: EBUSY; features without
  ``VIRTIO_F_ACCESS_PLATFORM`` (vdpa_sim): EINVAL;
* any vring ioctl with an index >= the number of vqs: ENOBUFS;
* ring address or base changed after DRIVER_OK: EINVAL;
* IOTLB v2 messages with an ASID past the device's address spaces: EINVAL;
* opening resets the device, closing resets it again.

The data path (the simulators processing rings) is not modelled: tests of
requests and frames run against the real kernel in the lab guests.  Where the
real kernel blocks (deleting a device whose node is open), the mock answers
EBUSY instead of hanging.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import os
import struct
from typing import Any, Dict, List, Optional, Tuple

from pyroute2.netlink import ctrlmsg

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import copy_from_user, copy_to_user, fail, read_user, write_user

__all__ = ["MockVdpa", "SimDevice"]

_NLMSGHDR = struct.Struct("=IHHII")
_FAMILY_ID = 0x1d
_NLM_F_MULTI = 2
_NLM_F_DUMP = 0x300
_NLM_F_CAPPED = 0x100
_NLM_F_ACK_TLVS = 0x200
_ALL = (1 << 64) - 1


def _msg(cls: Any, cmd: int, attrs: List[Tuple[str, Any]], seq: int, mtype: int,
         flags: int = 0) -> bytes:
    m = cls()
    m["cmd"] = cmd
    m["version"] = 1
    m["attrs"] = attrs
    m["header"]["type"] = mtype
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m["header"]["pid"] = 0
    m.encode()
    return bytes(m.data)


def _err(err: int, request: bytes, extack: Optional[str] = None) -> bytes:
    body = struct.pack("=i", -err) + request[:_NLMSGHDR.size]
    flags = _NLM_F_CAPPED
    if extack:
        text = extack.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(text), 1) + text
        body += tlv + bytes(-len(tlv) % 4)
        flags |= _NLM_F_ACK_TLVS
    seq = _NLMSGHDR.unpack_from(request)[3]
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), 2, flags, seq, 0) + body


def _done(seq: int) -> bytes:
    return _NLMSGHDR.pack(20, 3, _NLM_F_MULTI, seq, 0) + struct.pack("=i", 0)


class SimDevice:
    """A vDPA device of a simulator management device."""

    def __init__(self, name: str, mgmtdev: "SimMgmtDev", index: int, mac: Optional[str],
                 mtu: Optional[int], features: Optional[int]) -> None:
        self.name = name
        self.mgmtdev = mgmtdev
        self.index = index
        self.device_id = mgmtdev.device_id
        self.features = features if features is not None else mgmtdev.features
        self.mac = mac or "00:00:00:00:00:00"
        self.mtu = mtu or 1500
        self.nvqs = mgmtdev.nvqs
        self.groups = mgmtdev.groups
        self.spaces = mgmtdev.spaces
        self.open_files = 0
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.acked: Optional[int] = None
        self.vrings: Dict[int, Dict[str, int]] = {}
        self.group_asid = [0] * self.groups
        self.suspended = False

    def config(self) -> bytes:
        if self.device_id == lib.VIRTIO_ID_NET:
            c = ffi.new("struct virtio_net_config *")
            for i, b in enumerate(bytes.fromhex(self.mac.replace(":", ""))):
                c.mac[i] = b
            c.status = lib.VIRTIO_NET_S_LINK_UP
            c.max_virtqueue_pairs = 1
            c.mtu = self.mtu
            return bytes(ffi.buffer(c))
        c = ffi.new("struct virtio_blk_config *")
        c.capacity = 0x40000
        c.size_max = 4096
        c.seg_max = 32
        c.blk_size = 512
        c.num_queues = 1
        return bytes(ffi.buffer(c))


class SimMgmtDev:
    """``vdpasim_net`` or ``vdpasim_blk`` as the 6.12 simulators describe themselves."""

    def __init__(self, name: str, device_id: int, features: int, max_vqs: int, nvqs: int,
                 groups: int, spaces: int, attr_mask: int) -> None:
        self.name, self.device_id, self.features = name, device_id, features
        self.max_vqs, self.nvqs, self.groups, self.spaces = max_vqs, nvqs, groups, spaces
        self.attr_mask = attr_mask


def _bits(*names: str) -> int:
    out = 0
    for n in names:
        out |= 1 << getattr(lib, n)
    return out


_NET_FEATURES = _bits("VIRTIO_NET_F_MTU", "VIRTIO_NET_F_MAC", "VIRTIO_NET_F_STATUS",
                      "VIRTIO_NET_F_CTRL_VQ", "VIRTIO_NET_F_CTRL_MAC_ADDR", "VIRTIO_F_ANY_LAYOUT",
                      "VIRTIO_F_VERSION_1", "VIRTIO_F_ACCESS_PLATFORM")
_BLK_FEATURES = _bits("VIRTIO_BLK_F_SIZE_MAX", "VIRTIO_BLK_F_SEG_MAX", "VIRTIO_BLK_F_BLK_SIZE",
                      "VIRTIO_BLK_F_TOPOLOGY", "VIRTIO_BLK_F_MQ", "VIRTIO_BLK_F_FLUSH",
                      "VIRTIO_BLK_F_DISCARD", "VIRTIO_BLK_F_WRITE_ZEROES",
                      "VIRTIO_F_VERSION_1", "VIRTIO_F_ACCESS_PLATFORM")
_BACKEND = _bits("VHOST_BACKEND_F_IOTLB_MSG_V2", "VHOST_BACKEND_F_IOTLB_BATCH",
                 "VHOST_BACKEND_F_IOTLB_ASID", "VHOST_BACKEND_F_SUSPEND", "VHOST_BACKEND_F_RESUME",
                 "VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK")


class NetlinkFile(MockFile):
    """A NETLINK_GENERIC socket: requests written, answers read."""

    kind = "netlink"

    def __init__(self, kernel: Any, path: str, family: "MockVdpa") -> None:
        super().__init__(kernel, path)
        self.family = family
        self.queue: List[bytes] = []

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is None:
            if not self.queue:
                raise fail(errno.EAGAIN)
            out = b""
            while self.queue and len(out) + len(self.queue[0]) <= size:
                out += self.queue.pop(0)
            return out
        self.queue += self.family.request(data)
        return len(data)


class VhostVdpaFile(MockFile):
    """An open /dev/vhost-vdpa-N."""

    kind = "vhost-vdpa"

    def __init__(self, kernel: Any, path: str, dev: SimDevice) -> None:
        super().__init__(kernel, path)
        self.dev = dev
        self.owner = False
        self.backend = 0
        self.iotlb: Dict[int, List[Tuple[int, int, int]]] = {}
        dev.open_files += 1
        dev.reset()

    def release(self) -> None:
        self.dev.open_files -= 1
        self.dev.reset()

    def _u(self, addr: int, ctype: str) -> int:
        return int(copy_from_user(addr, ctype)[0])

    def _put(self, addr: int, ctype: str, value: int) -> int:
        copy_to_user(addr, ffi.new(ctype + " *", value), ffi.sizeof(ctype))
        return 0

    def ioctl(self, cmd: int, addr: int) -> int:
        d = self.dev
        if cmd == lib.VHOST_SET_OWNER:
            if self.owner:
                raise fail(errno.EBUSY)
            self.owner = True
            return 0
        if cmd == lib.VHOST_GET_FEATURES:
            return self._put(addr, "uint64_t", d.features)
        if cmd == lib.VHOST_SET_FEATURES:
            f = self._u(addr, "uint64_t")
            if d.status & lib.VIRTIO_CONFIG_S_FEATURES_OK:
                raise fail(errno.EBUSY)
            if f & ~d.features or not f >> lib.VIRTIO_F_ACCESS_PLATFORM & 1:
                raise fail(errno.EINVAL)
            d.acked = f
            return 0
        if cmd == lib.VHOST_GET_BACKEND_FEATURES:
            return self._put(addr, "uint64_t", _BACKEND)
        if cmd == lib.VHOST_SET_BACKEND_FEATURES:
            f = self._u(addr, "uint64_t")
            if f & ~_BACKEND:
                raise fail(errno.EOPNOTSUPP)
            self.backend = f
            return 0
        simple = {lib.VHOST_VDPA_GET_DEVICE_ID: ("uint32_t", d.device_id),
                  lib.VHOST_VDPA_GET_STATUS: ("uint8_t", d.status),
                  lib.VHOST_VDPA_GET_VRING_NUM: ("uint16_t", 256),
                  lib.VHOST_VDPA_GET_CONFIG_SIZE: ("uint32_t", len(d.config())),
                  lib.VHOST_VDPA_GET_VQS_COUNT: ("uint32_t", d.nvqs),
                  lib.VHOST_VDPA_GET_GROUP_NUM: ("uint32_t", d.groups),
                  lib.VHOST_VDPA_GET_AS_NUM: ("unsigned int", d.spaces)}
        if cmd in simple:
            return self._put(addr, *simple[cmd])
        if cmd == lib.VHOST_VDPA_SET_STATUS:
            s = self._u(addr, "uint8_t")
            if s and d.status & ~s:
                raise fail(errno.EINVAL)
            if s == 0:
                d.reset()
            d.status = s
            return 0
        if cmd == lib.VHOST_VDPA_GET_IOVA_RANGE:
            r = ffi.new("struct vhost_vdpa_iova_range *", {"first": 0, "last": _ALL})
            copy_to_user(addr, r, ffi.sizeof(r[0]))
            return 0
        if cmd in (lib.VHOST_VDPA_GET_CONFIG, lib.VHOST_VDPA_SET_CONFIG):
            c = copy_from_user(addr, "struct vhost_vdpa_config")
            cfg = d.config()
            if c.off > len(cfg) or c.len > len(cfg) - c.off:
                raise fail(errno.EINVAL)
            base = addr + ffi.offsetof("struct vhost_vdpa_config", "buf")
            if cmd == lib.VHOST_VDPA_GET_CONFIG:
                write_user(base, cfg[c.off:c.off + c.len])
            else:
                read_user(base, c.len)
            return 0
        if cmd == lib.VHOST_VDPA_SET_GROUP_ASID:
            s = copy_from_user(addr, "struct vhost_vring_state")
            if s.index >= d.groups or s.num >= d.spaces:
                raise fail(errno.EINVAL)
            d.group_asid[s.index] = s.num
            return 0
        if cmd in (lib.VHOST_VDPA_SUSPEND, lib.VHOST_VDPA_RESUME):
            d.suspended = cmd == lib.VHOST_VDPA_SUSPEND
            return 0
        if cmd == lib.VHOST_VDPA_SET_CONFIG_CALL:
            return 0
        if cmd in (lib.VHOST_SET_VRING_NUM, lib.VHOST_SET_VRING_BASE, lib.VHOST_GET_VRING_BASE,
                   lib.VHOST_SET_VRING_ADDR, lib.VHOST_SET_VRING_KICK, lib.VHOST_SET_VRING_CALL,
                   lib.VHOST_SET_VRING_ERR, lib.VHOST_VDPA_SET_VRING_ENABLE,
                   lib.VHOST_VDPA_GET_VRING_GROUP, lib.VHOST_VDPA_GET_VRING_SIZE,
                   lib.VHOST_VDPA_GET_VRING_DESC_GROUP):
            return self._vring(cmd, addr)
        raise fail(errno.ENOTTY)

    def _vring(self, cmd: int, addr: int) -> int:
        d = self.dev
        index = self._u(addr, "uint32_t")           # every vring argument starts with its index
        if index >= d.nvqs:
            raise fail(errno.ENOBUFS)
        vr = d.vrings.setdefault(index, {"num": 0, "base": 0, "ready": 0})
        running = d.status & lib.VIRTIO_CONFIG_S_DRIVER_OK
        if cmd in (lib.VHOST_SET_VRING_NUM, lib.VHOST_SET_VRING_BASE,
                   lib.VHOST_VDPA_SET_VRING_ENABLE):
            s = copy_from_user(addr, "struct vhost_vring_state")
            if cmd == lib.VHOST_SET_VRING_BASE and running:
                raise fail(errno.EINVAL)
            vr[{lib.VHOST_SET_VRING_NUM: "num", lib.VHOST_SET_VRING_BASE: "base",
                lib.VHOST_VDPA_SET_VRING_ENABLE: "ready"}[cmd]] = s.num
            return 0
        if cmd == lib.VHOST_SET_VRING_ADDR:
            if running:
                raise fail(errno.EINVAL)
            return 0
        if cmd in (lib.VHOST_SET_VRING_KICK, lib.VHOST_SET_VRING_CALL, lib.VHOST_SET_VRING_ERR):
            return 0
        if cmd == lib.VHOST_GET_VRING_BASE:
            value = vr["base"]
        elif cmd == lib.VHOST_VDPA_GET_VRING_GROUP:
            value = 1 if d.groups > 1 and index == d.nvqs - 1 else 0
        elif cmd == lib.VHOST_VDPA_GET_VRING_DESC_GROUP:
            if not self.backend >> lib.VHOST_BACKEND_F_DESC_ASID & 1:
                raise fail(errno.EOPNOTSUPP)
            value = 0
        else:
            value = 256
        s = ffi.new("struct vhost_vring_state *", {"index": index, "num": value})
        copy_to_user(addr, s, ffi.sizeof(s[0]))
        return 0

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is None:
            raise fail(errno.EAGAIN)
        if not self.backend >> lib.VHOST_BACKEND_F_IOTLB_MSG_V2 & 1:
            raise fail(errno.EINVAL)
        m = ffi.new("struct vhost_msg_v2 *")
        ffi.memmove(m, data, min(len(data), ffi.sizeof(m[0])))
        if m.type != lib.VHOST_IOTLB_MSG_V2:
            raise fail(errno.EINVAL)
        if m.asid >= self.dev.spaces or (m.asid and not self.backend >>
                                         lib.VHOST_BACKEND_F_IOTLB_ASID & 1):
            raise fail(errno.EINVAL)
        t = m.iotlb
        maps = self.iotlb.setdefault(m.asid, [])
        if t.type == lib.VHOST_IOTLB_UPDATE:
            if t.size == 0 or t.iova + t.size - 1 > _ALL:
                raise fail(errno.EINVAL)
            maps.append((t.iova, t.size, t.uaddr))
        elif t.type == lib.VHOST_IOTLB_INVALIDATE:
            self.iotlb[m.asid] = [x for x in maps if x[0] + x[1] <= t.iova or
                                  x[0] >= t.iova + t.size]
        return len(data)


@register
class MockVdpa(Family):
    """Family ``vdpa``: the vdpa netlink family, vdpasim_net/vdpasim_blk and vhost-vdpa nodes.

    Configuration ``vdpa_loaded``: whether the vdpa core (the netlink family)
    is loaded; ``net_admin``: whether the process has CAP_NET_ADMIN.
    """

    name = "vdpa"

    @dataclasses.dataclass
    class Config:
        vdpa_loaded: bool = True
        net_admin: bool = True

    def __init__(self, kernel: Any, config: "MockVdpa.Config") -> None:
        super().__init__(kernel, config)
        self.loaded = config.vdpa_loaded
        self.mgmtdevs = {
            "vdpasim_net": SimMgmtDev("vdpasim_net", lib.VIRTIO_ID_NET, _NET_FEATURES, 3, 3, 2, 2,
                                      (1 << lib.VDPA_ATTR_DEV_NET_CFG_MACADDR) |
                                      (1 << lib.VDPA_ATTR_DEV_NET_CFG_MTU) |
                                      (1 << lib.VDPA_ATTR_DEV_FEATURES)),
            "vdpasim_blk": SimMgmtDev("vdpasim_blk", lib.VIRTIO_ID_BLOCK, _BLK_FEATURES, 0, 1, 1,
                                      1, 1 << lib.VDPA_ATTR_DEV_FEATURES),
        }
        self.devices: Dict[str, SimDevice] = {}
        self._next_index = 0

    def modprobe(self, module: str) -> Optional[Tuple[int, str]]:
        if module in ("vdpa", "vhost_vdpa", "vdpa_sim", "vdpa_sim_net", "vdpa_sim_blk"):
            self.loaded = True
            return 0, ""
        return None

    def socket(self, family: int, type_: int, proto: int) -> Optional[MockFile]:
        if family == 16 and proto == 16:           # AF_NETLINK, NETLINK_GENERIC
            return NetlinkFile(self.kernel, "netlink:generic", self)
        return None

    def leaks(self) -> List[str]:
        return [f"vDPA device {n} not deleted" for n in self.devices]

    # -- netlink --------------------------------------------------------------------------------
    def request(self, data: bytes) -> List[bytes]:
        from pyvfio.vdpa.netlink import vdpamsg
        length, mtype, flags, seq, _ = _NLMSGHDR.unpack_from(data)
        if mtype == 0x10:                          # GENL_ID_CTRL: CTRL_CMD_GETFAMILY
            req = ctrlmsg(data)
            req.decode()
            if req.get_attr("CTRL_ATTR_FAMILY_NAME") != "vdpa" or not self.loaded:
                return [_err(errno.ENOENT, data)]
            return [_msg(ctrlmsg, 1, [("CTRL_ATTR_FAMILY_ID", _FAMILY_ID),
                                      ("CTRL_ATTR_FAMILY_NAME", "vdpa")], seq, 0x10)]
        if mtype != _FAMILY_ID:
            return [_err(errno.EINVAL, data)]
        req = vdpamsg(data)
        req.decode()
        try:
            answers = self._command(req["cmd"], req, bool(flags & _NLM_F_DUMP))
        except _Refused as r:
            return [_err(r.err, data, r.extack)]
        multi = _NLM_F_MULTI if flags & _NLM_F_DUMP else 0
        out = [_msg(vdpamsg, req["cmd"], attrs, seq, _FAMILY_ID, multi) for attrs in answers]
        if flags & _NLM_F_DUMP:
            out.append(_done(seq))
        elif flags & 4:                            # NLM_F_ACK
            out.append(_err(0, data))
        return out

    def _command(self, cmd: int, req: Any, dump: bool) -> List[List[Tuple[str, Any]]]:
        name = req.get_attr("VDPA_ATTR_DEV_NAME")
        if cmd == lib.VDPA_CMD_MGMTDEV_GET:
            mds = list(self.mgmtdevs.values())
            if not dump:
                want = req.get_attr("VDPA_ATTR_MGMTDEV_DEV_NAME")
                mds = [m for m in mds if m.name == want]
                if not mds:
                    raise _Refused(errno.ENODEV, "vdpa: Fail to find the specified mgmt device")
            return [[("VDPA_ATTR_MGMTDEV_DEV_NAME", m.name),
                     ("VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES", 1 << m.device_id),
                     ("VDPA_ATTR_DEV_MGMTDEV_MAX_VQS", m.max_vqs),
                     ("VDPA_ATTR_DEV_SUPPORTED_FEATURES",
                      m.features if m.device_id == lib.VIRTIO_ID_NET else 0)] for m in mds]
        if cmd in (lib.VDPA_CMD_DEV_NEW, lib.VDPA_CMD_DEV_DEL) and not self.config.net_admin:
            raise _Refused(errno.EPERM)
        if cmd == lib.VDPA_CMD_DEV_NEW:
            md = self.mgmtdevs.get(req.get_attr("VDPA_ATTR_MGMTDEV_DEV_NAME"))
            if md is None or req.get_attr("VDPA_ATTR_MGMTDEV_BUS_NAME"):
                raise _Refused(errno.ENODEV, "vdpa: Fail to find the specified management device")
            if name in self.devices:
                raise _Refused(errno.EEXIST)
            given = 0
            for key, _ in req["attrs"]:
                attr = getattr(lib, key)
                if attr in (lib.VDPA_ATTR_DEV_NET_CFG_MACADDR, lib.VDPA_ATTR_DEV_NET_CFG_MTU,
                            lib.VDPA_ATTR_DEV_NET_CFG_MAX_VQP, lib.VDPA_ATTR_DEV_FEATURES):
                    given |= 1 << attr
            if given & ~md.attr_mask:
                raise _Refused(errno.EOPNOTSUPP, "vdpa: Some provided attributes are not "
                                                 f"supported: {given & ~md.attr_mask:#x}")
            self._add(SimDevice(name, md, self._next_index,
                                req.get_attr("VDPA_ATTR_DEV_NET_CFG_MACADDR"),
                                req.get_attr("VDPA_ATTR_DEV_NET_CFG_MTU"),
                                req.get_attr("VDPA_ATTR_DEV_FEATURES")))
            self._next_index += 1
            return []
        if cmd == lib.VDPA_CMD_DEV_DEL:
            d = self._find(name)
            if d.open_files:
                raise _Refused(errno.EBUSY, "mock: the kernel would wait for the open "
                                            "vhost-vdpa file")
            self._remove(d)
            return []
        if cmd in (lib.VDPA_CMD_DEV_GET, lib.VDPA_CMD_DEV_CONFIG_GET):
            devs = list(self.devices.values()) if dump else [self._find(name)]
            fill = self._dev_attrs if cmd == lib.VDPA_CMD_DEV_GET else self._config_attrs
            return [fill(d) for d in devs]
        if cmd == lib.VDPA_CMD_DEV_VSTATS_GET:
            d = self._find(name)
            if not d.status & lib.VIRTIO_CONFIG_S_FEATURES_OK:
                raise _Refused(errno.EAGAIN, "vdpa: feature negotiation not complete")
            return [[("VDPA_ATTR_DEV_NAME", d.name),
                     ("VDPA_ATTR_DEV_QUEUE_INDEX", req.get_attr("VDPA_ATTR_DEV_QUEUE_INDEX")),
                     ("VDPA_ATTR_DEV_VENDOR_ATTR_NAME", "received_desc"),
                     ("VDPA_ATTR_DEV_VENDOR_ATTR_VALUE", 0),
                     ("VDPA_ATTR_DEV_VENDOR_ATTR_NAME", "completed_desc"),
                     ("VDPA_ATTR_DEV_VENDOR_ATTR_VALUE", 0)]]
        raise _Refused(errno.EOPNOTSUPP)

    def _find(self, name: Optional[str]) -> SimDevice:
        d = self.devices.get(name or "")
        if d is None:
            raise _Refused(errno.ENODEV, "vdpa: device not found")
        return d

    @staticmethod
    def _dev_attrs(d: SimDevice) -> List[Tuple[str, Any]]:
        return [("VDPA_ATTR_DEV_NAME", d.name), ("VDPA_ATTR_MGMTDEV_DEV_NAME", d.mgmtdev.name),
                ("VDPA_ATTR_DEV_ID", d.device_id), ("VDPA_ATTR_DEV_VENDOR_ID", 0),
                ("VDPA_ATTR_DEV_MAX_VQS", d.mgmtdev.nvqs), ("VDPA_ATTR_DEV_MAX_VQ_SIZE", 256),
                ("VDPA_ATTR_DEV_MIN_VQ_SIZE", 1)]

    @staticmethod
    def _config_attrs(d: SimDevice) -> List[Tuple[str, Any]]:
        out: List[Tuple[str, Any]] = [("VDPA_ATTR_DEV_NAME", d.name),
                                      ("VDPA_ATTR_DEV_ID", d.device_id)]
        if d.device_id == lib.VIRTIO_ID_NET:
            out += [("VDPA_ATTR_DEV_NET_CFG_MACADDR", d.mac),
                    ("VDPA_ATTR_DEV_NET_STATUS", struct.pack("<H", lib.VIRTIO_NET_S_LINK_UP)),
                    ("VDPA_ATTR_DEV_NET_CFG_MTU", d.mtu)]
        else:
            out += [("VDPA_ATTR_DEV_BLK_CFG_CAPACITY", 0x40000),
                    ("VDPA_ATTR_DEV_BLK_CFG_BLK_SIZE", 512)]
        if d.status & lib.VIRTIO_CONFIG_S_FEATURES_OK and d.acked is not None:
            out.append(("VDPA_ATTR_DEV_NEGOTIATED_FEATURES", d.acked))
        out.append(("VDPA_ATTR_DEV_FEATURES", d.features))
        return out

    # -- sysfs and nodes ----------------------------------------------------------------------------
    def _add(self, d: SimDevice) -> None:
        host = self.kernel.host
        node = f"vhost-vdpa-{d.index}"
        devdir = host.sys_path("bus", "vdpa", "devices", d.name)
        os.makedirs(os.path.join(devdir, node), exist_ok=True)
        cls_dir = host.sys_path("class", "vhost-vdpa", node)
        os.makedirs(cls_dir, exist_ok=True)
        link = os.path.join(cls_dir, "device")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(devdir, link)
        path = host.dev_path(node)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()
        self.kernel.add_node(path, functools.partial(self._open, d=d))
        self.devices[d.name] = d

    def _open(self, path: str, d: SimDevice) -> VhostVdpaFile:
        if self.devices.get(d.name) is not d:
            raise fail(errno.ENOENT)                # the device was deleted
        return VhostVdpaFile(self.kernel, path, d)

    def _remove(self, d: SimDevice) -> None:
        import shutil
        host = self.kernel.host
        node = f"vhost-vdpa-{d.index}"
        shutil.rmtree(host.sys_path("bus", "vdpa", "devices", d.name), ignore_errors=True)
        shutil.rmtree(host.sys_path("class", "vhost-vdpa", node), ignore_errors=True)
        path = host.dev_path(node)
        if os.path.exists(path):
            os.unlink(path)
        del self.devices[d.name]


class _Refused(Exception):
    def __init__(self, err: int, extack: Optional[str] = None) -> None:
        super().__init__(err)
        self.err = err
        self.extack = extack
