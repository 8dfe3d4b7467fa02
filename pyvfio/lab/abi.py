"""The ABI check: pyvfio's binding against the C compiler, on any architecture.

For a target architecture, the binding is built for it
(:func:`pyvfio.lab.cross.build_binding`) and run under qemu-user by the
target's own Python: it reports every ioctl request, constant, struct size
and field offset it holds.  A C program naming the same things is compiled
by the target's compiler and run under qemu-user too.  Every value must be
equal.  The C program is the one the header test compiles on the host
(:func:`probe_source`).

``python -m pyvfio.lab.abi [ARCH...]`` prints the table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from pyvfio.lab import cross

__all__ = ["Layout", "AbiReport", "probe_source", "parse_probe", "binding_layout", "c_layout",
           "check", "DUMP_SCRIPT"]


@dataclass
class Layout:
    """Everything the binding (or the C program) says."""
    families: Dict[str, List[str]] = field(default_factory=dict)
    ioctls: Dict[str, int] = field(default_factory=dict)
    constants: Dict[str, int] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    offsets: Dict[str, int] = field(default_factory=dict)   # "struct x.f" -> offset


@dataclass
class AbiReport:
    """The comparison for one architecture."""
    arch: str
    ioctls: int
    constants: int
    structs: int
    fields: int
    mismatches: List[str]
    how: str = ""
    #: The binding's values (ioctls and constants) and struct sizes.
    values: Dict[str, int] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches


#: Run by the target's Python: loads the extension given by path and prints its layout.
DUMP_SCRIPT = r"""
import importlib.util, json, sys
path = sys.argv[1]
sys.path[:0] = sys.argv[2:]
spec = importlib.util.spec_from_file_location("pyvfio.core._uapi", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
ffi, lib = mod.ffi, mod.lib
meta = json.loads(ffi.string(lib.pyvfio_meta()))
ioctls = set(meta["ioctls"])
out = {"families": meta["families"], "ioctls": {}, "constants": {}, "sizes": {},
       "offsets": {}}
for n in sorted(set(meta["ioctls"]) | set(meta["constants"])):
    out["ioctls" if n in ioctls else "constants"][n] = getattr(lib, n)
for s in meta["structs"]:
    t = ffi.typeof(s)
    out["sizes"][s] = ffi.sizeof(t)
    for fname, f in t.fields or ():
        if fname and not fname.startswith("__"):
            out["offsets"][s + "." + fname] = f.offset
json.dump(out, sys.stdout, sort_keys=True)
"""


def includes_of(families: Mapping[str, Sequence[str]]) -> str:
    return "".join(f"#include <{h}>\n" for hs in families.values() for h in hs)


def probe_source(includes: str, names: Iterable[str], structs: Iterable[str],
                 fields: Iterable[Tuple[str, str]]) -> str:
    """A C program printing each name's value (``V name negative unsigned``), each
    struct's size (``S struct|size``) and each field's offset (``O struct.f|offset``)."""
    body = ["#include <stdio.h>\n#include <stddef.h>\n", includes, "int main(void) {\n"]
    body += [f'printf("V %s %lld %llu\\n", "{n}", ({n}) < 0 ? 1LL : 0LL, '
             f'(unsigned long long)({n}));\n' for n in names]
    body += [f'printf("S %s|%zu\\n", "{s}", sizeof({s}));\n' for s in structs]
    body += [f'printf("O %s.%s|%zu\\n", "{s}", "{f}", __builtin_offsetof({s}, {f}));\n'
             for s, f in fields]
    body.append("return 0;\n}\n")
    return "".join(body)


def parse_probe(text: str) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    """(values, sizes, offsets) from a :func:`probe_source` program's output."""
    values, sizes, offsets = {}, {}, {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "V":
            name, neg, value = rest.split()
            values[name] = int(value) - (1 << 64) if neg == "1" else int(value)
        elif kind == "S":
            name, _, size = rest.rpartition("|")
            sizes[name] = int(size)
        elif kind == "O":
            name, _, off = rest.rpartition("|")
            offsets[name] = int(off)
    return values, sizes, offsets


def binding_layout(target: cross.Arch) -> Tuple[Layout, str]:
    """What the binding built for ``target`` says, run by ``target``'s Python."""
    if target.native:
        so = cross.build_binding(target, None)
        out = subprocess.run([sys.executable, "-c", DUMP_SCRIPT, str(so)], check=True,
                             capture_output=True, text=True).stdout
        how = "binding: host gcc, host Python"
    elif target.suite is None:
        # no Python for it: the host compiler builds the binding over its headers
        so = cross.build_binding(target, None)
        out = subprocess.run([sys.executable, "-c", DUMP_SCRIPT, str(so)], check=True,
                             capture_output=True, text=True).stdout
        how = f"binding: host gcc over {target.name}'s asm/ headers, host Python (no " \
              f"{target.name} Python in Debian)"
    else:
        land = cross.userland(target)
        so = cross.build_binding(target, land)
        dist = land.root / "usr/lib/python3/dist-packages"
        out = cross.run_user(target, [str(land.root / land.python), "-S", "-E", "-c",
                                      DUMP_SCRIPT, str(so), str(dist)],
                             root=land.root, env={"LANG": "C.UTF-8"})
        how = f"binding: {' '.join(target.compiler)}, Debian {target.suite} " \
              f"{Path(land.python).name} under {target.qemu_user}"
    data = json.loads(out)
    return Layout(data["families"], data["ioctls"], data["constants"], data["sizes"],
                  data["offsets"]), how


def c_layout(target: cross.Arch, layout: Layout, workdir: Path) -> Layout:
    """What the C compiler of ``target`` says about the names in ``layout``."""
    names = [*layout.ioctls, *layout.constants]
    fields: List[Tuple[str, str]] = []
    for k in layout.offsets:                 # "struct name.field"
        owner, field = k.rsplit(".", 1)
        fields.append((owner, field))
    src = workdir / f"probe-{target.name}.c"
    src.write_text(probe_source(includes_of(layout.families), names, layout.sizes, fields))
    exe = workdir / f"probe-{target.name}"
    cc = cross.compiler(target)
    args = [*cc, "-static", "-w", "-O0", "-I", str(cross.PROJECT_HEADERS),
            "-I", str(cross.uapi_include(target)), str(src), "-o", str(exe)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise cross.CrossError(f"compiling the ABI probe for {target.name} failed:\n"
                               + proc.stderr[-3000:])
    values, sizes, offsets = parse_probe(cross.run_user(target, [str(exe)]))
    return Layout(layout.families, {n: values[n] for n in layout.ioctls if n in values},
                  {n: values[n] for n in layout.constants if n in values}, sizes, offsets)


def compare(name: str, py: Layout, c: Layout, how: str = "") -> AbiReport:
    bad = []
    for kind in ("ioctls", "constants", "sizes", "offsets"):
        mine, theirs = getattr(py, kind), getattr(c, kind)
        for k, v in mine.items():
            if theirs.get(k) != v:
                bad.append(f"{kind[:-1]} {k}: binding {v:#x}, C {theirs.get(k, 'missing')}"
                           if isinstance(v, int) else f"{k}")
    return AbiReport(name, len(py.ioctls), len(py.constants), len(py.sizes),
                     len(py.offsets), bad, how, {**py.ioctls, **py.constants}, dict(py.sizes))


def check(name: str, workdir: Optional[Path] = None) -> AbiReport:
    """Compare the binding with the C compiler on architecture ``name``."""
    target = cross.arch(name)
    py, how = binding_layout(target)
    with tempfile.TemporaryDirectory() as tmp:
        c = c_layout(target, py, Path(workdir or tmp))
    how += f"; C: {target.compiler_note}" + (
        f" under {target.qemu_user}" if target.qemu_user else "")
    return compare(target.name, py, c, how)


def table(reports: Sequence[AbiReport]) -> str:
    """A Markdown table of the reports."""
    lines = ["| arch | ioctls | constants | structs | fields | mismatches | how |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in reports:
        lines.append(f"| {r.arch} | {r.ioctls} | {r.constants} | {r.structs} | {r.fields} | "
                     f"{len(r.mismatches)} | {r.how} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(cross.ARCHES)
    reports = []
    for n in names:
        r = check(n)
        reports.append(r)
        for m in r.mismatches[:20]:
            print(f"{n}: MISMATCH {m}", file=sys.stderr)
    print(table(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
