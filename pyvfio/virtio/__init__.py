"""virtio from the driver's side: device memory, split and packed virtqueues.

:class:`DeviceMemory` places DMA buffers at device addresses;
:class:`SplitQueue` and :class:`PackedQueue` (or :func:`create_queue`, which
picks by the negotiated features) offer buffers to a device and collect them
back.  They are transport-neutral: :mod:`pyvfio.vhost` and vhost-vdpa hand the
same queues to the kernel; :mod:`pyvfio.virtio.device` is the other side of a
ring (device models, VDUSE).
"""
from pyvfio.virtio.memory import DeviceMemory, Region
from pyvfio.virtio.queue import MAX_QUEUE_SIZE, PackedQueue, SplitQueue, Used, Virtqueue, create_queue
from pyvfio.virtio.features import feature_names

__all__ = ["DeviceMemory", "Region", "Virtqueue", "SplitQueue", "PackedQueue", "Used",
           "create_queue", "MAX_QUEUE_SIZE", "feature_names"]
