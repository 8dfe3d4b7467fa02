"""vDPA management over the ``vdpa`` generic-netlink family.

The kernel's vdpa core registers a generic-netlink family named ``vdpa``.
Management devices (``vdpasim_net``, ``vdpasim_blk``, ``vduse``, a PCI
function of a vDPA NIC) are the parents that create vDPA devices on
``VDPA_CMD_DEV_NEW``; ``vhost_vdpa`` then binds to each new device and
gives it a ``/dev/vhost-vdpa-N`` node.

The messages are pyroute2 generic-netlink messages (:class:`vdpamsg`) whose
attribute map is built from the kernel's ``enum vdpa_attr`` in the binding;
:class:`VdpaSocket` sends them through :mod:`pyvfio.core.syscalls` (so the
mock kernel can answer them too) and turns ``NLMSG_ERROR`` answers into
library errors carrying the kernel's extended-ack message and a remedy.
:class:`Vdpa` is the thin client returning typed records::

    with Vdpa() as nl:
        nl.dev_add("blk0", "vdpasim_blk")
        print(nl.dev("blk0"))
        nl.dev_del("blk0")
"""
from __future__ import annotations

import errno as _errno
import os
import socket as _socket
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, cast

from pyroute2.netlink import (CTRL_CMD_GETFAMILY, GENL_ID_CTRL, NLM_F_ACK, NLM_F_DUMP,
                              NLM_F_REQUEST, ctrlmsg, genlmsg)

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.uapi import ffi, lib

__all__ = ["vdpamsg", "VdpaSocket", "Vdpa", "MgmtDev", "VdpaDev", "DevConfig", "VStats",
           "feature_names", "class_names", "VdpaNetlinkError"]

NETLINK_GENERIC = 16
NETLINK_EXT_ACK = 11
SOL_NETLINK = 270
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
_NLMSGHDR = struct.Struct("=IHHII")
_RECV_SIZE = 1 << 16

GENL_NAME = ffi.string(lib.VDPA_GENL_NAME).decode()
GENL_VERSION = lib.VDPA_GENL_VERSION

# Attribute types as the kernel's vdpa.c puts them (nla_put_*).  Attributes
# whose width varies between kernel versions are read raw and decoded by length.
_ATTR_TYPES: Dict[str, str] = {
    "MGMTDEV_BUS_NAME": "asciiz", "MGMTDEV_DEV_NAME": "asciiz",
    "MGMTDEV_SUPPORTED_CLASSES": "uint64", "DEV_NAME": "asciiz", "DEV_ID": "uint32",
    "DEV_VENDOR_ID": "uint32", "DEV_MAX_VQS": "uint32", "DEV_MAX_VQ_SIZE": "uint16",
    "DEV_MIN_VQ_SIZE": "uint16", "DEV_NET_CFG_MACADDR": "l2addr", "DEV_NET_STATUS": "cdata",
    "DEV_NET_CFG_MAX_VQP": "uint16", "DEV_NET_CFG_MTU": "uint16",
    "DEV_NEGOTIATED_FEATURES": "uint64", "DEV_MGMTDEV_MAX_VQS": "uint32",
    "DEV_SUPPORTED_FEATURES": "uint64", "DEV_QUEUE_INDEX": "uint32",
    "DEV_VENDOR_ATTR_NAME": "asciiz", "DEV_VENDOR_ATTR_VALUE": "uint64",
    "DEV_FEATURES": "uint64", "DEV_BLK_CFG_CAPACITY": "uint64",
    "DEV_BLK_CFG_SIZE_MAX": "uint32", "DEV_BLK_CFG_BLK_SIZE": "uint32",
    "DEV_BLK_CFG_SEG_MAX": "uint32", "DEV_BLK_CFG_NUM_QUEUES": "uint16",
    "DEV_BLK_CFG_PHY_BLK_EXP": "uint8", "DEV_BLK_CFG_ALIGN_OFFSET": "uint8",
    "DEV_BLK_CFG_MIN_IO_SIZE": "uint16", "DEV_BLK_CFG_OPT_IO_SIZE": "uint32",
    "DEV_BLK_CFG_MAX_DISCARD_SEC": "uint32", "DEV_BLK_CFG_MAX_DISCARD_SEG": "uint32",
    "DEV_BLK_CFG_DISCARD_SEC_ALIGN": "uint32", "DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC": "uint32",
    "DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG": "uint32", "DEV_BLK_READ_ONLY": "uint8",
    "DEV_BLK_FLUSH": "uint8",
}


def _nla_map() -> Tuple[Tuple[int, str, str], ...]:
    """``enum vdpa_attr`` from the binding, with each attribute's type."""
    out = [(0, "VDPA_ATTR_UNSPEC", "none")]
    for short, kind in _ATTR_TYPES.items():
        name = "VDPA_ATTR_" + short
        if hasattr(lib, name):
            out.append((getattr(lib, name), name, kind))
    return tuple(sorted(out))


class vdpamsg(genlmsg):
    """A message of the ``vdpa`` generic-netlink family (command + attributes)."""
    prefix = "VDPA_ATTR_"
    nla_map = _nla_map()


class VdpaNetlinkError(errors.PyvfioError):
    """The vdpa family refused a request; ``extack`` is the kernel's own explanation."""

    def __init__(self, message: str, *, extack: Optional[str] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.extack = extack


# -- names as iproute2's ``vdpa`` prints them ----------------------------------

_CLASS_NAMES = {lib.VIRTIO_ID_NET: "net", lib.VIRTIO_ID_BLOCK: "block"}
_TYPE_NAMES = {lib.VIRTIO_ID_NET: "network", lib.VIRTIO_ID_BLOCK: "block"}
_NET_FEATURES = {
    "CSUM": "VIRTIO_NET_F_CSUM", "GUEST_CSUM": "VIRTIO_NET_F_GUEST_CSUM",
    "CTRL_GUEST_OFFLOADS": "VIRTIO_NET_F_CTRL_GUEST_OFFLOADS", "MTU": "VIRTIO_NET_F_MTU",
    "MAC": "VIRTIO_NET_F_MAC", "GUEST_TSO4": "VIRTIO_NET_F_GUEST_TSO4",
    "GUEST_TSO6": "VIRTIO_NET_F_GUEST_TSO6", "GUEST_ECN": "VIRTIO_NET_F_GUEST_ECN",
    "GUEST_UFO": "VIRTIO_NET_F_GUEST_UFO", "HOST_TSO4": "VIRTIO_NET_F_HOST_TSO4",
    "HOST_TSO6": "VIRTIO_NET_F_HOST_TSO6", "HOST_ECN": "VIRTIO_NET_F_HOST_ECN",
    "HOST_UFO": "VIRTIO_NET_F_HOST_UFO", "MRG_RXBUF": "VIRTIO_NET_F_MRG_RXBUF",
    "STATUS": "VIRTIO_NET_F_STATUS", "CTRL_VQ": "VIRTIO_NET_F_CTRL_VQ",
    "CTRL_RX": "VIRTIO_NET_F_CTRL_RX", "CTRL_VLAN": "VIRTIO_NET_F_CTRL_VLAN",
    "CTRL_RX_EXTRA": "VIRTIO_NET_F_CTRL_RX_EXTRA", "GUEST_ANNOUNCE": "VIRTIO_NET_F_GUEST_ANNOUNCE",
    "MQ": "VIRTIO_NET_F_MQ", "NOTIFY_ON_EMPTY": "VIRTIO_F_NOTIFY_ON_EMPTY",
    "CTRL_MAC_ADDR": "VIRTIO_NET_F_CTRL_MAC_ADDR", "ANY_LAYOUT": "VIRTIO_F_ANY_LAYOUT",
    "RSC_EXT": "VIRTIO_NET_F_RSC_EXT", "HASH_REPORT": "VIRTIO_NET_F_HASH_REPORT",
    "RSS": "VIRTIO_NET_F_RSS", "STANDBY": "VIRTIO_NET_F_STANDBY",
    "SPEED_DUPLEX": "VIRTIO_NET_F_SPEED_DUPLEX",
}
_TRANSPORT_FEATURES = {
    "RING_INDIRECT_DESC": "VIRTIO_RING_F_INDIRECT_DESC", "RING_EVENT_IDX": "VIRTIO_RING_F_EVENT_IDX",
    "VERSION_1": "VIRTIO_F_VERSION_1", "ACCESS_PLATFORM": "VIRTIO_F_ACCESS_PLATFORM",
    "RING_PACKED": "VIRTIO_F_RING_PACKED", "IN_ORDER": "VIRTIO_F_IN_ORDER",
    "ORDER_PLATFORM": "VIRTIO_F_ORDER_PLATFORM", "SR_IOV": "VIRTIO_F_SR_IOV",
    "NOTIFICATION_DATA": "VIRTIO_F_NOTIFICATION_DATA",
}


def _bits(table: Dict[str, str]) -> Dict[int, str]:
    return {getattr(lib, c): n for n, c in table.items() if hasattr(lib, c)}


_NET_BITS = _bits(_NET_FEATURES)
_TRANSPORT_BITS = _bits(_TRANSPORT_FEATURES)
_TRANSPORT_RANGE = (getattr(lib, "VIRTIO_TRANSPORT_F_START", 28),
                    getattr(lib, "VIRTIO_TRANSPORT_F_END", 41))


def feature_names(features: int, device_id: int = 0) -> List[str]:
    """Names of the set feature bits, as iproute2 spells them (``bit_N`` when unnamed)."""
    out = []
    for bit in range(64):
        if not features >> bit & 1:
            continue
        if _TRANSPORT_RANGE[0] <= bit <= _TRANSPORT_RANGE[1]:
            name = _TRANSPORT_BITS.get(bit)
        else:
            name = _NET_BITS.get(bit) if device_id == lib.VIRTIO_ID_NET else None
        out.append(name or f"bit_{bit}")
    return out


def class_names(classes: int) -> List[str]:
    """The virtio device classes of a ``MGMTDEV_SUPPORTED_CLASSES`` bitmap."""
    return [_CLASS_NAMES.get(i, "< unknown class >") for i in range(1, 64) if classes >> i & 1]


# -- typed results ------------------------------------------------------------------

@dataclass(frozen=True)
class MgmtDev:
    """A management device: the parent that creates vDPA devices."""
    dev_name: str
    bus_name: Optional[str] = None
    #: bitmap of virtio device ids it can create (bit 1: net, bit 2: block)
    supported_classes: int = 0
    max_supported_vqs: Optional[int] = None
    supported_features: Optional[int] = None

    @property
    def handle(self) -> str:
        """``bus/name`` or ``name``: how ``DEV_NEW`` and iproute2 name it."""
        return f"{self.bus_name}/{self.dev_name}" if self.bus_name else self.dev_name

    @property
    def classes(self) -> List[int]:
        return [i for i in range(64) if self.supported_classes >> i & 1]

    def iproute2(self) -> Dict[str, Any]:
        """The fields of ``vdpa -j mgmtdev show`` for this device."""
        out: Dict[str, Any] = {"supported_classes": class_names(self.supported_classes)}
        if self.max_supported_vqs is not None:
            out["max_supported_vqs"] = self.max_supported_vqs
        if self.supported_features is not None:
            classes = self.classes
            dev_id = classes[0] if len(classes) == 1 else 0
            out["dev_features"] = feature_names(self.supported_features, dev_id)
        return out


@dataclass(frozen=True)
class VdpaDev:
    """A vDPA device (``VDPA_CMD_DEV_GET``)."""
    name: str
    mgmtdev: str
    #: virtio device id (1 net, 2 block)
    device_id: int
    vendor_id: Optional[int] = None
    max_vqs: Optional[int] = None
    max_vq_size: Optional[int] = None
    min_vq_size: Optional[int] = None

    def iproute2(self) -> Dict[str, Any]:
        """The fields of ``vdpa -j dev show`` for this device."""
        out: Dict[str, Any] = {"type": _TYPE_NAMES.get(self.device_id, "<unknown type>"),
                               "mgmtdev": self.mgmtdev}
        for key in ("vendor_id", "max_vqs", "max_vq_size"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class DevConfig:
    """A vDPA device's configuration (``VDPA_CMD_DEV_CONFIG_GET``)."""
    name: str
    device_id: int
    vendor_id: Optional[int] = None
    #: features the device was provisioned with
    features: Optional[int] = None
    #: features the driver negotiated (only once FEATURES_OK is set)
    negotiated_features: Optional[int] = None
    mac: Optional[str] = None
    status: Optional[int] = None
    max_vqp: Optional[int] = None
    mtu: Optional[int] = None
    #: virtio-blk configuration fields by attribute (``capacity``, ``blk_size``, ...)
    blk: Dict[str, int] = field(default_factory=dict)

    def iproute2(self) -> Dict[str, Any]:
        """The fields of ``vdpa -j dev config show`` for this device."""
        out: Dict[str, Any] = {}
        if self.device_id != lib.VIRTIO_ID_NET:
            return out
        if self.mac is not None:
            out["mac"] = self.mac
        if self.status is not None:
            out["link"] = "up" if self.status & lib.VIRTIO_NET_S_LINK_UP else "down"
            out["link_announce"] = bool(self.status & lib.VIRTIO_NET_S_ANNOUNCE)
        if self.max_vqp is not None:
            out["max_vq_pairs"] = self.max_vqp
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.negotiated_features is not None:
            out["negotiated_features"] = feature_names(self.negotiated_features, self.device_id)
        if self.features is not None:
            out["dev_features"] = feature_names(self.features, self.device_id)
        return out


@dataclass(frozen=True)
class VStats:
    """Vendor statistics of one virtqueue (``VDPA_CMD_DEV_VSTATS_GET``)."""
    name: str
    queue_index: int
    negotiated_features: Optional[int] = None
    #: counter name -> value, in the order the parent reported them
    stats: Dict[str, int] = field(default_factory=dict)


# -- the socket -----------------------------------------------------------------------

class VdpaSocket(Handle):
    """A NETLINK_GENERIC socket bound to the ``vdpa`` family.

    :meth:`request` sends one message and collects the answers (all parts of
    a dump) until the kernel's ACK, ``NLMSG_DONE`` or error.
    """

    def __init__(self) -> None:
        self.name = "vdpa netlink"
        self.fd = syscalls.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_GENERIC,
                                  options=((SOL_NETLINK, NETLINK_EXT_ACK, 1),),
                                  what="netlink generic (vdpa)")
        self._seq = 0
        try:
            self.family = self._resolve()
        except BaseException:
            self.close()
            raise

    def _release(self) -> None:
        syscalls.close(self.fd)

    def _resolve(self) -> int:
        msg = ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", GENL_NAME)]
        try:
            (answer,) = self._exchange(msg, GENL_ID_CTRL, NLM_F_REQUEST, ctrlmsg, "CTRL_CMD_GETFAMILY")
        except errors.PyvfioError as exc:
            if exc.errno == _errno.ENOENT:
                raise errors.ModuleMissingError(
                    f"the kernel has no generic-netlink family {GENL_NAME!r}",
                    errno=_errno.ENOENT, op="CTRL_CMD_GETFAMILY", device=self.name,
                    remedy="load the vDPA core and a parent driver: `modprobe vdpa_sim_net` "
                           "(or vdpa_sim_blk, vduse; CONFIG_VDPA)") from None
            raise
        return int(answer.get_attr("CTRL_ATTR_FAMILY_ID"))

    def request(self, cmd: int, attrs: Sequence[Tuple[str, Any]] = (), *,
                dump: bool = False, op: Optional[str] = None) -> List[vdpamsg]:
        """Send ``cmd`` with ``attrs``; return the answer messages (a list for a dump)."""
        self._check_open()
        msg = vdpamsg()
        msg["cmd"] = cmd
        msg["version"] = GENL_VERSION
        msg["attrs"] = list(attrs)
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_DUMP if dump else 0)
        return self._exchange(msg, self.family, flags, vdpamsg, op or _CMD_NAMES.get(cmd, str(cmd)))

    def _exchange(self, msg: Any, msg_type: int, flags: int, cls: Any, op: str) -> List[Any]:
        self._seq += 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        syscalls.write(self.fd, bytes(msg.data), device=self.name)
        out: List[Any] = []
        while True:
            data = syscalls.read(self.fd, _RECV_SIZE, device=self.name)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype, mflags, mseq, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    raise errors.PyvfioError(f"malformed netlink message of {length} bytes",
                                             op=op, device=self.name)
                part = data[off:off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue            # a stale answer to an earlier request
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", part, _NLMSGHDR.size)[0]
                    if code == 0:
                        return out      # the ACK
                    raise self._error(-code, part, mflags, op)
                answer = cls(part)
                answer.decode()
                out.append(answer)
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return out

    def _error(self, err: int, part: bytes, mflags: int, op: str) -> errors.PyvfioError:
        extack = _extack(part, mflags)
        text = os.strerror(err) + (f": {extack}" if extack else "")
        remedy = _remedy(err, op, extack)
        cls = _subclass(type(errors.from_errno(err)))
        exc = cls(text, errno=err, op=op, device=self.name, remedy=remedy)
        exc.extack = extack
        return cast(errors.PyvfioError, exc)      # the class is built at run time


_SUBCLASSES: Dict[type, type] = {}


def _subclass(cls: type) -> type:
    """A VdpaNetlinkError that is also the errno's usual library class."""
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = type(f"VdpaNetlink{cls.__name__}", (VdpaNetlinkError, cls), {})
        _SUBCLASSES[cls] = sub
    return sub


def _extack(part: bytes, mflags: int) -> Optional[str]:
    """The kernel's extended-ack message (``NLMSGERR_ATTR_MSG``) of an error answer."""
    if not mflags & NLM_F_ACK_TLVS:
        return None
    off = _NLMSGHDR.size + 4
    inner_len = _NLMSGHDR.unpack_from(part, off)[0] if len(part) >= off + _NLMSGHDR.size else 0
    off += _NLMSGHDR.size if mflags & NLM_F_CAPPED else (inner_len + 3) & ~3
    while off + 4 <= len(part):
        alen, atype = struct.unpack_from("=HH", part, off)
        if alen < 4:
            break
        if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
            return part[off + 4:off + alen].split(b"\0", 1)[0].decode(errors="replace")
        off += (alen + 3) & ~3
    return None


def _remedy(err: int, op: str, extack: Optional[str]) -> Optional[str]:
    if err in (_errno.EPERM, _errno.EACCES):
        return ("creating and deleting vDPA devices needs CAP_NET_ADMIN: run as root "
                "(or grant the capability: `setcap cap_net_admin+ep`)")
    if err == _errno.ENODEV and op == "VDPA_CMD_DEV_NEW":
        return ("no such management device: load its parent driver (`modprobe vdpa_sim_net`, "
                "`modprobe vdpa_sim_blk` or `modprobe vduse`) and list them with "
                "`pyvfio vdpa mgmtdev show`")
    if err == _errno.ENODEV:
        return "no such vDPA device: list them with `pyvfio vdpa dev show`"
    if err == _errno.EEXIST:
        return "a vDPA device of that name exists: pick another name or delete it first"
    if err == _errno.EOPNOTSUPP and op == "VDPA_CMD_DEV_NEW":
        return ("the management device does not accept some of these attributes: see its "
                "`pyvfio vdpa mgmtdev show` (vdpasim_net takes mac and mtu, not max_vqp)")
    if err == _errno.EAGAIN and op == "VDPA_CMD_DEV_VSTATS_GET":
        return "statistics are only there once the driver set FEATURES_OK"
    return None


_CMD_NAMES = {getattr(lib, n): n for n in (
    "VDPA_CMD_MGMTDEV_GET", "VDPA_CMD_DEV_NEW", "VDPA_CMD_DEV_DEL", "VDPA_CMD_DEV_GET",
    "VDPA_CMD_DEV_CONFIG_GET", "VDPA_CMD_DEV_VSTATS_GET")}


# -- the thin client -------------------------------------------------------------------

def _handle_attrs(handle: str) -> List[Tuple[str, Any]]:
    """``bus/name`` or ``name`` as MGMTDEV_BUS_NAME/MGMTDEV_DEV_NAME attributes."""
    if handle.count("/") > 1 or not handle or handle.startswith("/") or handle.endswith("/"):
        raise errors.InvalidArgumentError(
            f"management device {handle!r} is not `name` or `bus/name`",
            remedy="e.g. vdpasim_net, vduse or pci/0000:01:00.5")
    if "/" in handle:
        bus, name = handle.split("/")
        return [("VDPA_ATTR_MGMTDEV_BUS_NAME", bus), ("VDPA_ATTR_MGMTDEV_DEV_NAME", name)]
    return [("VDPA_ATTR_MGMTDEV_DEV_NAME", handle)]


def _mgmtdev(msg: vdpamsg) -> MgmtDev:
    return MgmtDev(dev_name=msg.get_attr("VDPA_ATTR_MGMTDEV_DEV_NAME"),
                   bus_name=msg.get_attr("VDPA_ATTR_MGMTDEV_BUS_NAME"),
                   supported_classes=msg.get_attr("VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES") or 0,
                   max_supported_vqs=msg.get_attr("VDPA_ATTR_DEV_MGMTDEV_MAX_VQS"),
                   supported_features=msg.get_attr("VDPA_ATTR_DEV_SUPPORTED_FEATURES"))


def _mgmt_handle(msg: vdpamsg) -> str:
    bus = msg.get_attr("VDPA_ATTR_MGMTDEV_BUS_NAME")
    name = msg.get_attr("VDPA_ATTR_MGMTDEV_DEV_NAME")
    return f"{bus}/{name}" if bus else name


def _dev(msg: vdpamsg) -> VdpaDev:
    return VdpaDev(name=msg.get_attr("VDPA_ATTR_DEV_NAME"), mgmtdev=_mgmt_handle(msg),
                   device_id=msg.get_attr("VDPA_ATTR_DEV_ID"),
                   vendor_id=msg.get_attr("VDPA_ATTR_DEV_VENDOR_ID"),
                   max_vqs=msg.get_attr("VDPA_ATTR_DEV_MAX_VQS"),
                   max_vq_size=msg.get_attr("VDPA_ATTR_DEV_MAX_VQ_SIZE"),
                   min_vq_size=msg.get_attr("VDPA_ATTR_DEV_MIN_VQ_SIZE"))


def _raw_uint(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    data = bytes(value)
    return int.from_bytes(data, "little") if data else 0


def _config(msg: vdpamsg) -> DevConfig:
    blk = {}
    for key, value in msg["attrs"]:
        if key.startswith("VDPA_ATTR_DEV_BLK_"):
            short = key[len("VDPA_ATTR_DEV_BLK_"):].lower()
            blk[short[4:] if short.startswith("cfg_") else short] = value
    return DevConfig(name=msg.get_attr("VDPA_ATTR_DEV_NAME"),
                     device_id=msg.get_attr("VDPA_ATTR_DEV_ID"),
                     vendor_id=msg.get_attr("VDPA_ATTR_DEV_VENDOR_ID"),
                     features=msg.get_attr("VDPA_ATTR_DEV_FEATURES"),
                     negotiated_features=msg.get_attr("VDPA_ATTR_DEV_NEGOTIATED_FEATURES"),
                     mac=msg.get_attr("VDPA_ATTR_DEV_NET_CFG_MACADDR"),
                     status=_raw_uint(msg.get_attr("VDPA_ATTR_DEV_NET_STATUS")),
                     max_vqp=msg.get_attr("VDPA_ATTR_DEV_NET_CFG_MAX_VQP"),
                     mtu=msg.get_attr("VDPA_ATTR_DEV_NET_CFG_MTU"), blk=blk)


def _vstats(msg: vdpamsg) -> VStats:
    stats: Dict[str, int] = {}
    pending: Optional[str] = None
    for key, value in msg["attrs"]:
        if key == "VDPA_ATTR_DEV_VENDOR_ATTR_NAME":
            pending = value
        elif key == "VDPA_ATTR_DEV_VENDOR_ATTR_VALUE" and pending is not None:
            stats[pending] = value
            pending = None
    return VStats(name=msg.get_attr("VDPA_ATTR_DEV_NAME"),
                  queue_index=msg.get_attr("VDPA_ATTR_DEV_QUEUE_INDEX"),
                  negotiated_features=msg.get_attr("VDPA_ATTR_DEV_NEGOTIATED_FEATURES"),
                  stats=stats)


def _parse_mac(mac: str) -> str:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise errors.InvalidArgumentError(f"MAC address {mac!r} is not six ':'-separated bytes",
                                          remedy="e.g. 52:54:00:12:34:56")
    try:
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError:
        raise errors.InvalidArgumentError(f"MAC address {mac!r} is not hexadecimal",
                                          remedy="e.g. 52:54:00:12:34:56") from None


def _u16(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 16:
        raise errors.InvalidArgumentError(f"{name} must be 1..65535, not {value!r}")
    return value


class Vdpa(Handle):
    """The vdpa management client: management devices and vDPA devices as typed records."""

    def __init__(self) -> None:
        self.name = "vdpa netlink"
        self.sock = VdpaSocket()

    def _release(self) -> None:
        self.sock.close()

    # -- management devices --
    def mgmtdevs(self) -> List[MgmtDev]:
        """Every management device (``VDPA_CMD_MGMTDEV_GET``, dump)."""
        return [_mgmtdev(m) for m in self.sock.request(lib.VDPA_CMD_MGMTDEV_GET, dump=True)]

    def mgmtdev(self, handle: str) -> MgmtDev:
        """One management device by ``name`` or ``bus/name``."""
        (m,) = self.sock.request(lib.VDPA_CMD_MGMTDEV_GET, _handle_attrs(handle))
        return _mgmtdev(m)

    # -- devices --
    def dev_add(self, name: str, mgmtdev: str, *, mac: Optional[str] = None,
                mtu: Optional[int] = None, max_vqp: Optional[int] = None,
                device_features: Optional[int] = None) -> VdpaDev:
        """Create vDPA device ``name`` on ``mgmtdev`` (``VDPA_CMD_DEV_NEW``); returns it."""
        if not name or "/" in name or len(name.encode()) >= 32:
            raise errors.InvalidArgumentError(f"vDPA device name {name!r} is not a device name",
                                              remedy="1..31 characters without '/'")
        attrs = _handle_attrs(mgmtdev) + [("VDPA_ATTR_DEV_NAME", name)]
        if mac is not None:
            attrs.append(("VDPA_ATTR_DEV_NET_CFG_MACADDR", _parse_mac(mac)))
        if mtu is not None:
            attrs.append(("VDPA_ATTR_DEV_NET_CFG_MTU", _u16("mtu", mtu)))
        if max_vqp is not None:
            attrs.append(("VDPA_ATTR_DEV_NET_CFG_MAX_VQP", _u16("max_vqp", max_vqp)))
        if device_features is not None:
            if not 0 <= device_features < 1 << 64:
                raise errors.InvalidArgumentError("device_features must be a 64-bit mask")
            attrs.append(("VDPA_ATTR_DEV_FEATURES", device_features))
        self.sock.request(lib.VDPA_CMD_DEV_NEW, attrs)
        return self.dev(name)

    def dev_del(self, name: str) -> None:
        """Delete vDPA device ``name`` (``VDPA_CMD_DEV_DEL``).

        The kernel waits for every open ``/dev/vhost-vdpa-N`` of the device to
        close before it returns, so deleting a device this process (or
        another) still holds would hang: that is refused here first.
        """
        from pyvfio.vdpa.device import check_not_open
        check_not_open(name)
        self.sock.request(lib.VDPA_CMD_DEV_DEL, [("VDPA_ATTR_DEV_NAME", name)])

    def devs(self) -> List[VdpaDev]:
        """Every vDPA device (``VDPA_CMD_DEV_GET``, dump)."""
        return [_dev(m) for m in self.sock.request(lib.VDPA_CMD_DEV_GET, dump=True)]

    def dev(self, name: str) -> VdpaDev:
        """One vDPA device by name."""
        (m,) = self.sock.request(lib.VDPA_CMD_DEV_GET, [("VDPA_ATTR_DEV_NAME", name)])
        return _dev(m)

    def dev_config(self, name: str) -> DevConfig:
        """A device's configuration (``VDPA_CMD_DEV_CONFIG_GET``)."""
        (m,) = self.sock.request(lib.VDPA_CMD_DEV_CONFIG_GET, [("VDPA_ATTR_DEV_NAME", name)])
        return _config(m)

    def dev_configs(self) -> List[DevConfig]:
        """Every device's configuration (dump)."""
        return [_config(m) for m in self.sock.request(lib.VDPA_CMD_DEV_CONFIG_GET, dump=True)]

    def dev_vstats(self, name: str, queue_index: int) -> VStats:
        """Vendor statistics of virtqueue ``queue_index`` (``VDPA_CMD_DEV_VSTATS_GET``)."""
        (m,) = self.sock.request(lib.VDPA_CMD_DEV_VSTATS_GET,
                                 [("VDPA_ATTR_DEV_NAME", name),
                                  ("VDPA_ATTR_DEV_QUEUE_INDEX", queue_index)])
        return _vstats(m)


def as_dict(record: Any) -> Dict[str, Any]:
    """A typed record as plain data."""
    return asdict(record)
