"""``pyvfio vdpa``: management devices and vDPA devices over the vdpa netlink family.

``--json`` prints what ``vdpa -j`` (iproute2) prints, with the same field names.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Optional

from pyvfio.cli import reports_errors

__all__ = ["register"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``vdpa mgmtdev show`` and ``vdpa dev show|add|del|config|vstats``."""
    vdpa = subparsers.add_parser("vdpa", help="vDPA management devices and devices (netlink)",
                                 description="Manage vDPA devices over the kernel's vdpa "
                                             "generic-netlink family (like iproute2's `vdpa`).")
    objs = vdpa.add_subparsers(dest="object", metavar="OBJECT", required=True)
    mgmt = objs.add_parser("mgmtdev", help="management devices")
    mcmds = mgmt.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = mcmds.add_parser("show", help="list management devices")
    show.add_argument("handle", nargs="?", metavar="MGMTDEV")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=reports_errors(_mgmtdev_show))

    dev = objs.add_parser("dev", help="vDPA devices")
    dcmds = dev.add_subparsers(dest="command", metavar="COMMAND", required=True)
    show = dcmds.add_parser("show", help="list vDPA devices")
    show.add_argument("name", nargs="?", metavar="DEV")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=reports_errors(_dev_show))
    add = dcmds.add_parser("add", help="create a vDPA device")
    add.add_argument("name", metavar="NAME")
    add.add_argument("mgmtdev", metavar="MGMTDEV")
    add.add_argument("--mac")
    add.add_argument("--mtu", type=int)
    add.add_argument("--max-vqp", type=int)
    add.add_argument("--device-features", type=lambda s: int(s, 0))
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=reports_errors(_dev_add))
    rm = dcmds.add_parser("del", help="delete a vDPA device")
    rm.add_argument("name", metavar="DEV")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(func=reports_errors(_dev_del))
    cfg = dcmds.add_parser("config", help="a device's configuration")
    cfg.add_argument("name", nargs="?", metavar="DEV")
    cfg.add_argument("--json", action="store_true")
    cfg.set_defaults(func=reports_errors(_dev_config))
    vst = dcmds.add_parser("vstats", help="vendor statistics of one virtqueue")
    vst.add_argument("name", metavar="DEV")
    vst.add_argument("qidx", type=int, metavar="QIDX")
    vst.add_argument("--json", action="store_true")
    vst.set_defaults(func=reports_errors(_dev_vstats))


def _emit(args: argparse.Namespace, section: str, records: Dict[str, Dict[str, Any]]) -> int:
    if args.json:
        print(json.dumps({section: records}))
        return 0
    for name, fields in records.items():
        words = []
        for key, value in fields.items():
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = str(value).lower()
            words.append(f"{key} {value}")
        print(f"{name}: " + " ".join(words))
    return 0


def mgmtdev_records(nl: Any, handle: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """``vdpa -j mgmtdev show`` as a dict."""
    devs = [nl.mgmtdev(handle)] if handle else nl.mgmtdevs()
    return {m.handle: m.iproute2() for m in devs}


def dev_records(nl: Any, name: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """``vdpa -j dev show`` as a dict."""
    devs = [nl.dev(name)] if name else nl.devs()
    return {d.name: d.iproute2() for d in devs}


def _mgmtdev_show(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        return _emit(args, "mgmtdev", mgmtdev_records(nl, args.handle))


def _dev_show(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        return _emit(args, "dev", dev_records(nl, args.name))


def _dev_add(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        d = nl.dev_add(args.name, args.mgmtdev, mac=args.mac, mtu=args.mtu, max_vqp=args.max_vqp,
                       device_features=args.device_features)
        return _emit(args, "dev", {d.name: d.iproute2()})


def _dev_del(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        nl.dev_del(args.name)
    if args.json:
        print(json.dumps({"deleted": args.name}))
    return 0


def _dev_config(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        cfgs = [nl.dev_config(args.name)] if args.name else nl.dev_configs()
        return _emit(args, "config", {c.name: c.iproute2() for c in cfgs})


def _dev_vstats(args: argparse.Namespace) -> int:
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        st = nl.dev_vstats(args.name, args.qidx)
        return _emit(args, "vstats", {st.name: {"queue_index": st.queue_index, **st.stats}})
