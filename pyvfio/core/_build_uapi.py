"""Build ``pyvfio.core._uapi``: a cffi binding generated from the system's uAPI headers.

Nothing here lists a struct or an ioctl by hand.  For every uAPI family whose
headers the compiler can find, the builder

1. preprocesses the headers with the C compiler (``-E -dD``), keeping the
   ``#define`` lines and the line markers that say which header each
   declaration came from;
2. parses the declarations of the covered headers with pycparser and writes a
   cffi ``cdef`` in which every struct and union is *partial* (``...;``) and
   every array length and constant is ``...``, so cffi asks the C compiler for
   each offset, size and value: they are right on every architecture;
3. keeps only the object-like macros that the compiler accepts as integer
   constant expressions (a first compile weeds out the others);
4. records which families were found, and which macros are ioctl requests,
   so that ``pyvfio.core.uapi`` can say so at run time.

Run as a script (``python -m pyvfio.core._build_uapi``) it builds in place; pip and
setuptools call it through ``cffi_modules`` in ``pyproject.toml``/``setup.py``.

Cross-building for another architecture
---------------------------------------
The same generator builds the binding for any target.  Each setting is an
environment variable or, run as a script, the option named after it:

``PYVFIO_UAPI_CC`` (``--cc``)
    the target's C compiler with any flags (default ``$CC``, else ``cc``),
    e.g. ``aarch64-linux-gnu-gcc``.
``PYVFIO_UAPI_INCLUDE`` (``--uapi-include``)
    directories (``:``-separated) holding the uAPI headers to build from
    (``linux/``, ``asm/``, ``asm-generic/``, ...).  They are searched before
    the compiler's own, so a cross compiler does not mix the headers of its
    own ``linux-libc-dev-*-cross`` with these.
``PYVFIO_UAPI_PYTHON_INCLUDE`` (``--python-include``)
    the target Python's include directories (``Python.h``, ``pyconfig.h``).
``PYVFIO_UAPI_EXT_SUFFIX`` (``--ext-suffix``)
    the target's extension suffix, e.g. ``.cpython-311-aarch64-linux-gnu.so``.

``python pyvfio/core/_build_uapi.py --cc aarch64-linux-gnu-gcc --uapi-include
DIR --python-include DIR --ext-suffix .cpython-311-aarch64-linux-gnu.so
--outdir OUT`` writes ``OUT/_uapi.cpython-311-aarch64-linux-gnu.so``.
Structs that the covered headers embed from other uAPI headers (arm64's
``kvm_regs`` holds ``asm/ptrace.h``'s ``user_pt_regs``) are declared too.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT_HEADERS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "kernel_headers")

# uAPI families and the headers whose declarations belong to them.
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "vfio": ("linux/vfio.h",),
    "iommufd": ("linux/iommufd.h",),
    "vhost": ("linux/vhost.h", "linux/vhost_types.h"),
    "vduse": ("linux/vduse.h",),
    "vdpa": ("linux/vdpa.h",),
    "virtio": ("linux/virtio_ring.h", "linux/virtio_config.h", "linux/virtio_net.h",
               "linux/virtio_blk.h", "linux/virtio_ids.h", "linux/virtio_vsock.h",
               "linux/virtio_scsi.h"),
    "tun": ("linux/if_tun.h",),
    "kvm": ("linux/kvm.h", "asm/kvm.h"),
    "uio_msi": ("uio_msi.h",),
    "pci": ("linux/pci_regs.h",),
}

# The system calls the syscall layer makes through the binding.
LIBC_CDEF = """
int pyvfio_ioctl(int fd, unsigned long request, void *arg);
int eventfd(unsigned int initval, int flags);
int mlock(const void *addr, size_t len);
int munlock(const void *addr, size_t len);
"""
LIBC_SOURCE = """
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
static int pyvfio_ioctl(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg);
}
"""

# x86 I/O ports: ioperm(2) opens a range to the calling thread, then in/out
# instructions of 8, 16 or 32 bits reach it (UIO port regions).  Elsewhere
# ioperm fails with ENOSYS and no access is made.
PORTIO_CDEF = """
int pyvfio_ioperm(unsigned long from, unsigned long num, int turn_on);
uint8_t pyvfio_inb(unsigned short port);
uint16_t pyvfio_inw(unsigned short port);
uint32_t pyvfio_inl(unsigned short port);
void pyvfio_outb(unsigned short port, uint8_t value);
void pyvfio_outw(unsigned short port, uint16_t value);
void pyvfio_outl(unsigned short port, uint32_t value);
"""
PORTIO_SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
static int pyvfio_ioperm(unsigned long from, unsigned long num, int on)
{ return ioperm(from, num, on); }
static uint8_t pyvfio_inb(unsigned short port) { return inb(port); }
static uint16_t pyvfio_inw(unsigned short port) { return inw(port); }
static uint32_t pyvfio_inl(unsigned short port) { return inl(port); }
static void pyvfio_outb(unsigned short port, uint8_t v) { outb(v, port); }
static void pyvfio_outw(unsigned short port, uint16_t v) { outw(v, port); }
static void pyvfio_outl(unsigned short port, uint32_t v) { outl(v, port); }
#else
static int pyvfio_ioperm(unsigned long from, unsigned long num, int on)
{ (void)from; (void)num; (void)on; errno = ENOSYS; return -1; }
static uint8_t pyvfio_inb(unsigned short port) { (void)port; return 0xff; }
static uint16_t pyvfio_inw(unsigned short port) { (void)port; return 0xffff; }
static uint32_t pyvfio_inl(unsigned short port) { (void)port; return 0xffffffff; }
static void pyvfio_outb(unsigned short port, uint8_t v) { (void)port; (void)v; }
static void pyvfio_outw(unsigned short port, uint16_t v) { (void)port; (void)v; }
static void pyvfio_outl(unsigned short port, uint32_t v) { (void)port; (void)v; }
#endif
"""

# Memory-mapped I/O: the accessors and barriers of mmio_access.h (one volatile
# load or store of each width, bulk copies of a stated width, barriers per
# architecture).  The same header is compiled into pyvfio.core._mmio.
MMIO_CDEF = """
uint8_t pyvfio_mmio_read8(void *base, size_t off);
uint16_t pyvfio_mmio_read16(void *base, size_t off);
uint32_t pyvfio_mmio_read32(void *base, size_t off);
uint64_t pyvfio_mmio_read64(void *base, size_t off);
uint16_t pyvfio_mmio_read16_swap(void *base, size_t off);
uint32_t pyvfio_mmio_read32_swap(void *base, size_t off);
uint64_t pyvfio_mmio_read64_swap(void *base, size_t off);
void pyvfio_mmio_write8(void *base, size_t off, uint8_t value);
void pyvfio_mmio_write16(void *base, size_t off, uint16_t value);
void pyvfio_mmio_write32(void *base, size_t off, uint32_t value);
void pyvfio_mmio_write64(void *base, size_t off, uint64_t value);
void pyvfio_mmio_write16_swap(void *base, size_t off, uint16_t value);
void pyvfio_mmio_write32_swap(void *base, size_t off, uint32_t value);
void pyvfio_mmio_write64_swap(void *base, size_t off, uint64_t value);
int pyvfio_mmio_read_n(void *base, size_t off, void *dst, size_t n, unsigned int width);
int pyvfio_mmio_write_n(void *base, size_t off, const void *src, size_t n, unsigned int width);
void pyvfio_mb(void);
void pyvfio_rmb(void);
void pyvfio_wmb(void);
void pyvfio_dma_rmb(void);
void pyvfio_dma_wmb(void);
const char *pyvfio_barrier_arch(void);
"""
MMIO_HEADER = os.path.join(HERE, "mmio_access.h")


def mmio_source() -> str:
    """The C accessors and barriers (``mmio_access.h``), compiled into the binding."""
    with open(MMIO_HEADER) as f:
        return f.read()


# Words that only decorate declarations; removed before pycparser sees them.
STRIP_DEFINES = [
    "-D__attribute__(x)=", "-D__extension__=", "-D__inline=inline",
    "-D__inline__=inline", "-D__restrict=", "-D__restrict__=", "-D__asm__(x)=",
    "-D__signed__=signed", "-D__volatile__=volatile", "-D__const=const",
]

_MARKER = re.compile(r'^# (\d+) "([^"]*)"')
_DEFINE = re.compile(r"^#define ([A-Za-z_]\w*)(\(?)\s*(.*)$")
_IOCTL_BODY = re.compile(r"\b_IO(?:R|W|WR)?(?:_BAD)?\s*\(")


def cc() -> List[str]:
    """The compiler command: ``$PYVFIO_UAPI_CC``, else ``$CC``, else ``cc``."""
    return (os.environ.get("PYVFIO_UAPI_CC") or os.environ.get("CC") or "cc").split()


def uapi_dirs() -> List[str]:
    """The explicit uAPI include directories (``$PYVFIO_UAPI_INCLUDE``), if any."""
    return [d for d in os.environ.get("PYVFIO_UAPI_INCLUDE", "").split(":") if d]


def _run(args: Sequence[str], src: str, ok: bool = True) -> "subprocess.CompletedProcess[str]":
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write(src)
        path = f.name
    try:
        proc = subprocess.run([*cc(), *args, path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if ok and proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc


def include_args() -> List[str]:
    args = ["-I", PROJECT_HEADERS]
    for d in uapi_dirs():
        args += ["-isystem", d]
    return args


def present_families() -> Dict[str, Tuple[str, ...]]:
    """The families whose every header compiles here."""
    found = {}
    for fam, headers in FAMILIES.items():
        src = "".join(f"#include <{h}>\n" for h in headers)
        if _run(["-fsyntax-only", *include_args()], src, ok=False).returncode == 0:
            found[fam] = headers
    return found


def _covers(path: str, headers: Iterable[str]) -> Optional[str]:
    for h in headers:
        if path.endswith("/" + h) or path == h:
            return h
    return None


class Header:
    """What one preprocessing pass learned about the covered headers."""

    def __init__(self, headers: Dict[str, str]) -> None:
        self.headers = headers            # header name -> family
        self.defines: Dict[str, Tuple[str, str]] = {}   # name -> (body, header)
        self.code: Dict[str, List[str]] = {}            # header -> code lines
        self.external_typedefs: Set[str] = set()
        self.external_code: Dict[str, List[str]] = {}   # other header -> code lines


def preprocess(families: Dict[str, Tuple[str, ...]]) -> Header:
    headers = {h: fam for fam, hs in families.items() for h in hs}
    unit = "".join(f"#include <{h}>\n" for h in headers)
    info = Header(headers)
    # pass 1: macros, attributed to the header that defines them
    out = _run(["-E", "-dD", *include_args(), "-o", "/dev/stdout"], unit).stdout
    cur = None
    for line in out.splitlines():
        m = _MARKER.match(line)
        if m:
            cur = _covers(m.group(2), headers)
            continue
        if cur and line.startswith("#define "):
            d = _DEFINE.match(line)
            if d and not d.group(2):
                info.defines[d.group(1)] = (d.group(3).strip(), cur)
        elif cur and line.startswith("#undef "):
            info.defines.pop(line.split()[1], None)
    # pass 2: declarations, decorations stripped, split by header
    out = _run(["-E", *STRIP_DEFINES, *include_args(), "-o", "/dev/stdout"], unit).stdout
    cur = None
    path = ""
    other: List[str] = []
    for line in out.splitlines():
        m = _MARKER.match(line)
        if m:
            path = m.group(2)
            cur = _covers(path, headers)
            continue
        if line.startswith("#"):
            continue
        if cur:
            info.code.setdefault(cur, []).append(line)
        else:
            other.append(line)
            info.external_code.setdefault(path, []).append(line)
    info.external_typedefs = _typedef_names("\n".join(other))
    return info


def _typedef_names(code: str) -> Set[str]:
    """Names typedef'd in code we do not parse (libc, asm/types.h, ...)."""
    names = set()
    for stmt in re.findall(r"\btypedef\b[^;{]*(?:\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}[^;]*)?;", code):
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)\s*\(", stmt)
        if m:
            names.add(m.group(1))
            continue
        m = re.search(r"(\w+)\s*(\[[^\]]*\]\s*)*;$", stmt)
        if m:
            names.add(m.group(1))
    return names


# ---------------------------------------------------------------------------
# declarations -> cdef
# ---------------------------------------------------------------------------

class CdefWriter:
    """Turns pycparser declarations into partial cffi declarations."""

    def __init__(self, info: Header) -> None:
        from pycparser import c_ast, c_generator
        self.c_ast = c_ast
        self.gen = c_generator.CGenerator()
        self.info = info
        self.structs: Dict[str, str] = {}      # "struct x" -> cdef text
        self.struct_family: Dict[str, str] = {}
        self.typedefs: Dict[str, str] = {}     # name -> cdef text
        self.enum_types: Dict[str, str] = {}   # "enum x" -> cdef text
        self.enumerators: Dict[str, str] = {}  # name -> header
        self.functions: Dict[str, str] = {}
        self.synthetic: Dict[str, str] = {}     # typedef name -> cdef text
        self.synthetic_source: List[str] = []   # their C definitions
        self.used_types: Set[str] = set()
        self.skipped: List[str] = []

    # -- parsing ------------------------------------------------------------
    def parse(self) -> None:
        from pycparser import CParser
        local_typedefs = set()
        for lines in self.info.code.values():
            local_typedefs |= _typedef_names("\n".join(lines))
        outside = sorted((self.info.external_typedefs | _INT128) - local_typedefs)
        prelude = "".join(f"typedef int {n};\n" for n in outside)
        parser = CParser()
        for header, lines in self.info.code.items():
            ast = parser.parse(prelude + "\n".join(lines), filename=header)
            for ext in ast.ext[len(outside):]:
                self._top(ext, header)
        self._resolve_external()

    def _resolve_external(self) -> None:
        """Define the structs and unions that the covered declarations use but
        other headers define (arm64's ``kvm_regs`` embeds ``asm/ptrace.h``'s
        ``user_pt_regs``): by value they could not stay opaque.  Repeats until
        every aggregate those bring in is defined too."""
        from pycparser import CParser, c_ast
        found: Optional[Dict[str, object]] = None
        while True:
            wanted: Dict[str, Optional[str]] = {}
            for key, text in [*self.structs.items(), *self.synthetic.items(),
                              *self.typedefs.items()]:
                for ref in re.findall(r"\b(?:struct|union) \w+", text):
                    if ref not in self.structs:
                        wanted.setdefault(ref, self.struct_family.get(key))
            if found is None:
                found = {}
                if wanted:
                    for path, lines in self.info.external_code.items():
                        code = "\n".join(lines)
                        if not re.search(r"\b(?:struct|union)\s+\w+\s*\{", code):
                            continue
                        own = _typedef_names(code)
                        names = sorted((self.info.external_typedefs | _INT128) - own)
                        prelude = "".join(f"typedef int {n};\n" for n in names)
                        try:
                            ast = CParser().parse(prelude + code, filename=path)
                        except Exception:        # libc or compiler-specific syntax
                            continue
                        for node in ast.ext[len(names):]:
                            self._external_aggregates(node.type if hasattr(node, "type")
                                                      else None, found, c_ast)
            new = [k for k in wanted if k in found]
            if not new:
                return
            for key in new:
                t = found[key]
                family = wanted[key] or "kvm"
                self.structs[key] = self._struct_body(t, key, key) + ";"
                self.struct_family[key] = family

    def _external_aggregates(self, t: Any, found: Dict[str, object], a: Any) -> None:
        while isinstance(t, (a.TypeDecl, a.PtrDecl, a.ArrayDecl)):
            t = t.type
        if isinstance(t, (a.Struct, a.Union)) and t.decls is not None:
            for d in t.decls:
                self._external_aggregates(d.type, found, a)
            if t.name:
                kind = "struct" if isinstance(t, a.Struct) else "union"
                found.setdefault(f"{kind} {t.name}", t)

    def _top(self, node: Any, header: str) -> None:
        a = self.c_ast
        if isinstance(node, a.FuncDef):
            self._function(node.decl, header)
            return
        if not isinstance(node, (a.Decl, a.Typedef)):
            return
        if isinstance(node, a.Typedef):
            self._collect_types(node.type, header)
            self.typedefs[node.name] = "typedef " + self._decl(node.type, node.name) + ";"
            return
        if isinstance(node.type, a.FuncDecl):
            self._function(node, header)
            return
        self._collect_types(node.type, header)

    def _function(self, decl: Any, header: str) -> None:
        try:
            text = self._decl(decl.type, decl.name)
        except _Skip as exc:
            self.skipped.append(f"function {decl.name}: {exc}")
            return
        self.functions[decl.name] = text + ";"

    def _collect_types(self, t: Any, header: str) -> None:
        """Record named struct/union/enum definitions found anywhere in ``t``."""
        a = self.c_ast
        while isinstance(t, (a.TypeDecl, a.PtrDecl, a.ArrayDecl)):
            t = t.type
        if isinstance(t, (a.Struct, a.Union)):
            for d in t.decls or ():
                self._collect_types(d.type, header)
            if t.name and t.decls is not None:
                kind = "struct" if isinstance(t, a.Struct) else "union"
                key = f"{kind} {t.name}"
                self.structs[key] = self._struct_body(t, key, key) + ";"
                self.struct_family[key] = self.info.headers[header]
        elif isinstance(t, a.Enum) and t.values is not None:
            names = [e.name for e in t.values.enumerators]
            for n in names:
                self.enumerators[n] = header
            if t.name:
                self.enum_types[f"enum {t.name}"] = (
                    f"enum {t.name} {{ {', '.join(names)}, ... }};")

    # -- rendering ----------------------------------------------------------
    def _struct_body(self, t: Any, key: str, cname: Optional[str], head: Optional[str] = None) -> str:
        """A struct/union body.

        ``cname`` is a C type name for this aggregate (``struct x``, or a
        synthetic typedef): then the body is partial and the compiler lays it
        out.  An aggregate without one (an unnamed member) is written exactly.
        """
        a = self.c_ast
        kind = "struct" if isinstance(t, a.Struct) else "union"
        partial = cname is not None
        if head is None:
            head = f"{kind} {t.name} " if t.name else f"{kind} "
        fields = self._fields(t, key, cname)
        if not fields and not partial:
            raise _Skip("empty anonymous aggregate")
        if partial:
            fields.append("...;")
        return head + "{ " + " ".join(fields) + " }"

    def _fields(self, t: Any, key: str, cname: Optional[str]) -> List[str]:
        """Member declarations of aggregate ``t``.

        In a partial aggregate, the members of an unnamed struct or union
        member are listed as the parent's own (C lets them be used so); their
        offsets, overlapping or not, come from the compiler.
        """
        a = self.c_ast
        fields = []
        for d in t.decls or ():
            if d.bitsize is not None:
                continue          # bitfields: layout still right through `...`
            flex = self._flex_wrapper(d)
            if flex is not None:
                d = flex
            if (cname is not None and d.name is None
                    and isinstance(d.type, (a.Struct, a.Union)) and d.type.decls):
                fields += self._fields(d.type, key, cname)
                continue
            try:
                self._hoist(d, key, cname)
                fields.append(self._decl(d.type, d.name, outer_array=cname is not None) + ";")
            except _Skip as exc:
                self.skipped.append(f"{key}.{d.name}: {exc}")
        return fields

    def _hoist(self, d: Any, key: str, cname: Optional[str]) -> None:
        """Give a named member of anonymous aggregate type a C name of its own.

        ``typedef __typeof__(((struct x *)0)->member) pyvfio_x__member;`` lets
        cffi ask the compiler for that type's layout too.  The member's type in
        the AST is replaced by the new name.
        """
        a = self.c_ast
        t, dims = d.type, 0
        while isinstance(t, a.ArrayDecl):
            t, dims = t.type, dims + 1
        if not (isinstance(t, a.TypeDecl) and isinstance(t.type, (a.Struct, a.Union))):
            return
        agg = t.type
        if agg.name or agg.decls is None or not d.name or cname is None:
            return
        base = re.sub(r"^(struct|union) ", "", cname)
        syn = f"pyvfio_{base}__{d.name}"
        self.synthetic_source.append(
            f"typedef __typeof__((({cname} *)0)->{d.name}{'[0]' * dims}) {syn};")
        kind = "struct" if isinstance(agg, a.Struct) else "union"
        body = self._struct_body(agg, f"{key}.{d.name}", syn, head=f"typedef {kind} ")
        self.synthetic[syn] = body + f" {syn};"
        t.type = a.IdentifierType([syn])

    def _flex_wrapper(self, d: Any) -> Any:
        """The `TYPE NAME[]` member hidden in __DECLARE_FLEX_ARRAY's wrapper struct."""
        a = self.c_ast
        t = d.type.type if isinstance(d.type, a.TypeDecl) else d.type
        if d.name or not isinstance(t, a.Struct) or t.name or not t.decls or len(t.decls) != 2:
            return None
        empty, arr = t.decls
        et = empty.type.type if isinstance(empty.type, a.TypeDecl) else None
        if isinstance(et, a.Struct) and not et.decls and isinstance(arr.type, a.ArrayDecl):
            return arr
        return None

    def _decl(self, t: Any, name: Optional[str], outer_array: bool = True) -> str:
        """C declarator text for ``name`` of type ``t`` (cffi dialect)."""
        a = self.c_ast
        name = name or ""
        if isinstance(t, a.TypeDecl):
            return f"{self._base(t.type)} {name}".strip()
        if isinstance(t, (a.Struct, a.Union)):       # unnamed member
            return f"{self._base(t)} {name}".strip()
        if isinstance(t, a.PtrDecl):
            inner = t.type
            if isinstance(inner, a.FuncDecl):
                return self._decl(inner, f"(*{name})")
            return self._decl(inner, f"*{name}", outer_array=False)
        if isinstance(t, a.ArrayDecl):
            if t.dim is None:
                dim = ""
            elif outer_array and not name.startswith("*"):
                dim = "..."
            else:
                dim = str(self._const(t.dim))
            if isinstance(t.dim, a.Constant) and t.dim.value in ("0",) and outer_array:
                dim = ""          # old-style flexible array `x[0]`
            return self._decl(t.type, f"{name}[{dim}]", outer_array=False)
        if isinstance(t, a.FuncDecl):
            args = []
            for p in (t.args.params if t.args else ()):
                if isinstance(p, a.EllipsisParam):
                    args.append("...")
                elif isinstance(p, a.Typename) and self.gen.visit(p) == "void":
                    args.append("void")
                else:
                    args.append(self._decl(p.type, getattr(p, "name", None), outer_array=False))
            return self._decl(t.type, f"{name}({', '.join(args) or 'void'})", outer_array=False)
        raise _Skip(f"unsupported declarator {type(t).__name__}")

    def _base(self, t: Any) -> str:
        a = self.c_ast
        if isinstance(t, a.IdentifierType):
            if _INT128 & set(t.names):
                raise _Skip("128-bit integer (cffi has no such type; the layout stays right)")
            text = " ".join(t.names)
            if len(t.names) == 1 and t.names[0] in self.info.external_typedefs:
                self.used_types.add(t.names[0])
            return text
        if isinstance(t, (a.Struct, a.Union)):
            kind = "struct" if isinstance(t, a.Struct) else "union"
            if t.decls is None or t.name:
                return f"{kind} {t.name}"
            return self._struct_body(t, f"{kind} <anonymous>", None)
        if isinstance(t, a.Enum):
            if t.name:
                return f"enum {t.name}" if t.values is None or True else ""
            return "int"
        raise _Skip(f"unsupported type {type(t).__name__}")

    def _const(self, expr: Any) -> int:
        """Evaluate an integer constant expression (inner array dimensions)."""
        text = self.gen.visit(expr)
        text = re.sub(r"(?<=\d)[uUlL]+\b", "", text)
        if not re.fullmatch(r"[\d\s()+\-*/<>|&x0-9a-fA-F~]*", text):
            raise _Skip(f"array size {text!r} is not a literal expression")
        return int(eval(text.replace("/", "//"), {"__builtins__": {}}))  # noqa: S307


class _Skip(Exception):
    pass


# GCC's 128-bit integer types (arm64's user_fpsimd_state.vregs): parsed, never declared
_INT128 = {"__uint128_t", "__int128_t"}


# ---------------------------------------------------------------------------
# constants: which macros are integer constant expressions
# ---------------------------------------------------------------------------

def integer_macros(info: Header, includes: str, names: Optional[Iterable[str]] = None,
                   check: str = "static const long long pyvfio_chk_{i} = (long long)(({n}) | 0);",
                   ) -> List[str]:
    """The covered macros that the compiler accepts as integer constants.

    With another ``check`` template, the macros that pass that check instead
    (e.g. string literals).
    """
    ok = set(info.defines if names is None else names)
    for _ in range(8):
        lines = [includes]
        where: Dict[int, str] = {}
        base = includes.count("\n") + 2
        for i, n in enumerate(sorted(ok)):
            where[base + i] = n
            lines.append(check.format(i=i, n=n))
        src = "\n".join(lines) + "\n"
        proc = _run(["-fsyntax-only", "-fmax-errors=0", "-w", *include_args()], src, ok=False)
        if proc.returncode == 0:
            return sorted(ok)
        bad = set()
        for m in re.finditer(r":(\d+):\d+: error", proc.stderr):
            ln = int(m.group(1))
            if ln in where:
                bad.add(where[ln])
        if not bad:
            raise RuntimeError("cannot classify macros:\n" + proc.stderr[-3000:])
        ok -= bad
    raise RuntimeError("macro classification did not settle")


def integer_typedefs(names: Iterable[str], includes: str) -> Set[str]:
    """The typedef names that are integer types."""
    names = sorted(names)
    ok = set(names)
    for _ in range(3):
        lines = [includes]
        base = includes.count("\n") + 2
        where = {}
        for i, n in enumerate(sorted(ok)):
            where[base + i] = n
            lines.append(f"enum {{ pyvfio_int_{i} = sizeof((({n})0) << 1) }};")
        proc = _run(["-fsyntax-only", "-fmax-errors=0", "-w", *include_args()],
                    "\n".join(lines) + "\n", ok=False)
        if proc.returncode == 0:
            return ok
        bad = {where[int(m.group(1))] for m in re.finditer(r":(\d+):\d+: error", proc.stderr)
               if int(m.group(1)) in where}
        if not bad:
            raise RuntimeError(proc.stderr[-3000:])
        ok -= bad
    return ok


def ioctl_macros(info: Header, macros: Iterable[str]) -> List[str]:
    """Macros whose expansion is built with _IO/_IOR/_IOW/_IOWR (directly or through another)."""
    known: Dict[str, bool] = {}

    def is_ioctl(name: str, depth: int = 0) -> bool:
        if name in known:
            return known[name]
        body = info.defines.get(name, ("", ""))[0]
        res = bool(_IOCTL_BODY.search(body))
        if not res and depth < 4:
            words = re.findall(r"[A-Za-z_]\w*", body)
            res = len(words) == 1 and words[0] in info.defines and is_ioctl(words[0], depth + 1)
        known[name] = res
        return res

    return [m for m in macros if is_ioctl(m)]


# ---------------------------------------------------------------------------

CDEF_BUILTINS = {
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t",
    "intptr_t", "uintptr_t", "size_t", "ssize_t", "ptrdiff_t", "wchar_t", "bool",
}


def build_cdef() -> Tuple[str, str, Dict[str, Any]]:
    """Return (cdef, C source, metadata) for the families present on this system."""
    families = present_families()
    info = preprocess(families)
    includes = "".join(f"#include <{h}>\n" for h in info.headers)
    w = CdefWriter(info)
    w.parse()
    macros = integer_macros(info, includes)
    strings = integer_macros(info, includes,
                             {n for n, (body, _) in info.defines.items() if body} - set(macros),
                             'static const char pyvfio_str_{i}[] = "" {n};')
    ioctls = ioctl_macros(info, macros)
    int_types = integer_typedefs(w.used_types - CDEF_BUILTINS, includes)
    parts = ["typedef int... %s;" % t for t in sorted(int_types)]
    parts += ["typedef struct { ...; } %s;" % t
              for t in sorted(w.used_types - CDEF_BUILTINS - int_types)]
    parts += list(w.enum_types.values())
    parts += [f"{k};" for k in w.structs]                 # forward declarations
    parts += list(w.typedefs.values())
    parts += list(w.synthetic.values())
    parts += list(w.structs.values())
    enum_values = set()
    for text in w.enum_types.values():
        enum_values.update(re.findall(r"\b([A-Za-z_]\w*)\b", text.split("{", 1)[1]))
    consts = [m for m in macros if m not in enum_values]
    consts += sorted(n for n in w.enumerators if n not in enum_values and n not in info.defines)
    parts += [f"#define {m} ..." for m in consts]
    parts += [f"static char *const {m};" for m in strings]
    parts += list(w.functions.values())
    meta = {
        "families": {f: list(h) for f, h in families.items()},
        "missing": sorted(set(FAMILIES) - set(families)),
        "ioctls": ioctls,
        "constants": sorted(set(macros) | set(w.enumerators)),
        "strings": sorted(strings),
        "structs": sorted(w.structs),
        "skipped": w.skipped,
        "family_of": {**{m: info.headers[h] for m, (_, h) in info.defines.items()},
                      **{k: f for k, f in w.struct_family.items()}},
    }
    cdef = "\n".join(parts) + "\n" + LIBC_CDEF + MMIO_CDEF + PORTIO_CDEF
    return cdef, includes + "\n".join(w.synthetic_source) + "\n", meta


def _meta_source(meta: Dict[str, Any]) -> Tuple[str, str]:
    """Metadata as C string constants: lists joined by spaces."""
    import json
    blob = json.dumps(meta, separators=(",", ":"), sort_keys=True)
    literal = "".join(f"\\{b:03o}" if b < 0x20 or b in (0x22, 0x5c) or b > 0x7e else chr(b)
                      for b in blob.encode())
    src = f'static const char *pyvfio_meta(void) {{ return "{literal}"; }}\n'
    return "const char *pyvfio_meta(void);\n", src


def make_builder() -> Any:
    from cffi import FFI
    cdef, includes, meta = build_cdef()
    meta_cdef, meta_src = _meta_source(meta)
    ffibuilder = FFI()
    ffibuilder.cdef(cdef + meta_cdef)
    ffibuilder.set_source("pyvfio.core._uapi",
                          includes + LIBC_SOURCE + mmio_source() + PORTIO_SOURCE + meta_src,
                          include_dirs=[PROJECT_HEADERS],
                          extra_compile_args=["-w", *(f"-isystem{d}" for d in uapi_dirs())])
    return ffibuilder


def python_include_dirs() -> List[str]:
    """The target Python's include directories (``$PYVFIO_UAPI_PYTHON_INCLUDE``)."""
    return [d for d in os.environ.get("PYVFIO_UAPI_PYTHON_INCLUDE", "").split(":") if d]


def cross_build(outdir: str, ext_suffix: Optional[str] = None) -> str:
    """Build the extension for the target the settings describe; return its path.

    cffi writes the C source; the target's compiler (:func:`cc`) compiles it
    against the target Python's headers into ``outdir/_uapi<ext_suffix>``.
    """
    suffix = ext_suffix or os.environ.get("PYVFIO_UAPI_EXT_SUFFIX")
    pyinc = python_include_dirs()
    if not suffix or not pyinc:
        raise RuntimeError("a cross build needs the target's extension suffix "
                           "(PYVFIO_UAPI_EXT_SUFFIX) and Python include directories "
                           "(PYVFIO_UAPI_PYTHON_INCLUDE)")
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, "_uapi" + suffix)
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "_uapi.c")
        make_builder().emit_c_code(c_file)
        args = [*cc(), "-shared", "-fPIC", "-O2", "-w", *(f"-I{d}" for d in pyinc),
                *include_args(), c_file, "-o", out + ".tmp"]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    os.replace(out + ".tmp", out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description="build pyvfio's uAPI binding (natively, or for "
                                            "another architecture with the options below)")
    p.add_argument("--cdef", action="store_true", help="print the generated cdef and stop")
    p.add_argument("--cc", help="the target's C compiler command (PYVFIO_UAPI_CC)")
    p.add_argument("--uapi-include", help="uAPI include directories, ':'-separated "
                                          "(PYVFIO_UAPI_INCLUDE)")
    p.add_argument("--python-include", help="the target Python's include directories "
                                            "(PYVFIO_UAPI_PYTHON_INCLUDE)")
    p.add_argument("--ext-suffix", help="the target's extension suffix (PYVFIO_UAPI_EXT_SUFFIX)")
    p.add_argument("--outdir", help="where a cross build writes _uapi<suffix> "
                                    "(default: this package's directory)")
    args = p.parse_args(argv)
    for opt, env in (("cc", "PYVFIO_UAPI_CC"), ("uapi_include", "PYVFIO_UAPI_INCLUDE"),
                     ("python_include", "PYVFIO_UAPI_PYTHON_INCLUDE"),
                     ("ext_suffix", "PYVFIO_UAPI_EXT_SUFFIX")):
        if getattr(args, opt):
            os.environ[env] = getattr(args, opt)
    if args.cdef:
        print(build_cdef()[0])
    elif os.environ.get("PYVFIO_UAPI_EXT_SUFFIX") or os.environ.get("PYVFIO_UAPI_PYTHON_INCLUDE"):
        print(cross_build(args.outdir or HERE))
    else:
        make_builder().compile(tmpdir=os.path.dirname(os.path.dirname(HERE)), verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
