"""How a kernel family plugs into the mock kernel: :class:`Family`, :class:`MockFile`,
:class:`KernelState` and the registry.

A family (pci, vfio, iommufd, vhost, ...) is a subclass of :class:`Family`
decorated with :func:`register`.  The mock kernel creates one instance of
every registered family, in the order their ``requires`` need, hands each its
own configuration (a dataclass, ``Family.Config``) and then calls
:meth:`Family.setup`, where the family builds its part of the fake tree and
claims its device nodes with :meth:`KernelState.add_node`.  Families never
import the kernel: they see it through :class:`KernelState`, and each other
as ``kernel.<name>`` (``kernel.pci``, ``kernel.vfio``).
"""
from __future__ import annotations

import dataclasses
import errno
from typing import (Any, Callable, ClassVar, Dict, Iterable, List, Optional, Protocol, Tuple,
                    Type, TypeVar)

from pyvfio.core.sysfs import Host
from pyvfio.mock.core.uaccess import fail

__all__ = ["Family", "MockFile", "KernelState", "NodeFactory", "register", "registered",
           "ordered"]


class MockFile:
    """An open file of a mock node; ``refs`` counts fds and kernel-internal holders.

    Subclasses answer the system calls the node supports; the defaults are
    what Linux answers for a file without that operation.
    """

    kind = "file"

    def __init__(self, kernel: "KernelState", path: str) -> None:
        self.kernel = kernel
        self.path = path
        self.refs = 0

    def get(self) -> "MockFile":
        """Take a reference (``fget``)."""
        self.refs += 1
        return self

    def put(self) -> None:
        """Drop a reference (``fput``); the last one releases the file."""
        self.refs -= 1
        if self.refs == 0:
            self.release()

    def release(self) -> None:
        """The file's ``release``: free what the open file holds."""

    def ioctl(self, cmd: int, addr: int) -> int:
        raise fail(errno.ENOTTY)

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        """read (``data`` None) or write at ``offset`` (None: the file position)."""
        raise fail(errno.EINVAL)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> Any:
        raise fail(errno.ENODEV)


#: Opens a node: called with the absolute path, returns the new open file.
NodeFactory = Callable[[str], MockFile]


class KernelState(Protocol):
    """What a family may use of the mock kernel (and nothing more)."""

    #: The fake machine: sysfs, /dev and /proc roots.
    host: Host

    def family(self, name: str) -> "Family":
        """The instance of family ``name`` (also reachable as ``kernel.<name>``)."""

    def add_node(self, path: str, factory: NodeFactory) -> None:
        """Answer open(2) of ``path`` (absolute) with ``factory(path)``."""

    def add_writer(self, prefix: str, writer: Callable[[str, bytes], None]) -> None:
        """Answer writes to files below ``prefix`` (sysfs attributes) with ``writer``."""

    def install(self, f: MockFile) -> int:
        """Give ``f`` a descriptor (a real one, so numbers are unique)."""

    def file_of(self, fd: int) -> Optional[MockFile]:
        """The mock file behind ``fd``; None for a real file; EBADF if ``fd`` is not open."""

    def is_mock_fd(self, fd: int) -> bool:
        """Whether ``fd`` is a descriptor of a mock node."""

    def files(self) -> Iterable[MockFile]:
        """The mock files open now."""

    def __getattr__(self, name: str) -> Any:
        """Another family's instance, by its name (``kernel.process``, ``kernel.vfio``):
        the families are plugins, so their types are not known at this layer."""


class Family:
    """One kernel family in the mock.  Subclass, set ``name``, and :func:`register` it.

    ``Config`` is a dataclass whose fields are this family's keyword
    arguments of :class:`~pyvfio.mock.MockKernel`; ``requires`` names the
    families that must be set up first.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[Tuple[str, ...]] = ()

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, kernel: KernelState, config: Any) -> None:
        self.kernel = kernel
        self.config = config

    def setup(self) -> None:
        """Build this family's part of the fake tree and register its nodes."""

    def service(self) -> None:
        """Let device models make progress (called around every system call)."""

    def modprobe(self, module: str) -> Optional[Tuple[int, str]]:
        """Load ``module`` if this family provides it: (status, message), else None."""
        return None

    def leaks(self) -> List[str]:
        """What this family still holds that the process should have released."""
        return []

    def shutdown(self) -> None:
        """Release host resources (after every descriptor is closed)."""


F = TypeVar("F", bound=Type[Family])
_REGISTRY: Dict[str, Type[Family]] = {}


def register(cls: F) -> F:
    """Class decorator: make ``cls`` a family of every mock kernel created from now on."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no family name")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for other in _REGISTRY.values():
        if other is cls or other.name == cls.name:
            continue
        clash = fields & {f.name for f in dataclasses.fields(other.Config)}
        if clash:
            raise ValueError(f"families {other.name} and {cls.name} both take {sorted(clash)}")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> Dict[str, Type[Family]]:
    """The registered families by name."""
    return dict(_REGISTRY)


def ordered(families: Dict[str, Type[Family]]) -> List[Type[Family]]:
    """``families`` sorted so that each comes after the ones it requires."""
    done: List[Type[Family]] = []
    seen: Dict[str, bool] = {}

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        if seen.get(name):
            return
        if name in chain:
            raise ValueError(f"mock families require each other: {' -> '.join(chain + (name,))}")
        cls = families.get(name)
        if cls is None:
            raise ValueError(f"mock family {chain[-1]} requires {name}, which is not registered")
        for dep in cls.requires:
            visit(dep, chain + (name,))
        seen[name] = True
        done.append(cls)

    for name in sorted(families):
        visit(name, ())
    return done
