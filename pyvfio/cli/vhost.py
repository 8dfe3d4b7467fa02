"""``pyvfio vhost info``: the features each /dev/vhost-* node offers."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from pyvfio import errors
from pyvfio.cli import reports_errors

__all__ = ["register", "node_records"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    vhost = subparsers.add_parser("vhost", help="vhost device nodes (vhost-net, -vsock, -scsi)")
    sub = vhost.add_subparsers(dest="vhost_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser("info", help="features of each /dev/vhost-* node")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--dev", metavar="DIR", help="device-node root (default /dev)")
    info.set_defaults(func=reports_errors(_info))


def node_records(dev: str = "") -> List[Dict[str, Any]]:
    """One record per vhost node: features (hex and names), backend features, or the error."""
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.vhost.net import VhostNet
    from pyvfio.vhost.scsi import VhostScsi
    from pyvfio.vhost.vsock import VhostVsock
    h = host().with_roots(dev=dev) if dev else host()
    out = []
    with use_host(h):
        for cls in (VhostNet, VhostVsock, VhostScsi):
            rec: Dict[str, Any] = {"node": h.dev_path(cls.node), "module": cls.module}
            try:
                with cls(owner=False) as v:
                    d = v.describe()
                rec.update(features=f"{d.features:#x}", names=d.names,
                           backend_features=f"{d.backend_features:#x}", **d.extra)
            except errors.PyvfioError as exc:
                rec.update(error=exc.message, remedy=exc.remedy)
            out.append(rec)
    return out


def _info(args: argparse.Namespace) -> int:
    recs = node_records(args.dev or "")
    if args.json:
        json.dump(recs, sys.stdout, indent=2)
        print()
        return 0
    for r in recs:
        if "error" in r:
            print(f"{r['node']}: {r['error']}\n  remedy: {r['remedy']}")
            continue
        extra = "".join(f", {k} {v}" for k, v in r.items()
                        if k not in ("node", "module", "features", "names", "backend_features"))
        print(f"{r['node']}: features {r['features']}, backend features "
              f"{r['backend_features']}{extra}")
        for n in r["names"]:
            print(f"    {n}")
    return 0
