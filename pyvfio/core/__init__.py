"""The shared core: everything above it (pci, vfio, vhost, vdpa, virtio, uio, kvm)
builds on these, and they import nothing above them.

- :mod:`~pyvfio.core.uapi` — the kernel's uAPI headers compiled with cffi;
- :mod:`~pyvfio.core.syscalls` — every system call, errno → :mod:`pyvfio.errors`;
- :mod:`~pyvfio.core.argsz` — VFIO's argsz growth, variable-length structs, capability chains;
- :mod:`~pyvfio.core.handle` — the base of fd-owning objects;
- :mod:`~pyvfio.core.eventfd` — eventfds, shared by every family's interrupts;
- :mod:`~pyvfio.core.memory` — DMA buffers; :mod:`~pyvfio.core.space` — I/O address spaces.
"""
