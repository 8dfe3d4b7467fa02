#!/usr/bin/env python3
"""DMA and MSI with QEMU's edu device through VFIO.

Run it in the lab (boots a guest with an edu device):

    python3 -m pyvfio lab run -- python3 examples/edu_dma.py

Binds the first edu device to vfio-pci, maps a buffer for DMA, fills the
device's buffer from it, copies it back to another page with a completion
interrupt, checks the bytes, and restores the original driver.
"""
import os
import sys

import pyvfio
from pyvfio import pci
from pyvfio.drivers.edu import DMA_MASK_BITS, Edu

edus = pci.find(vendor=0x1234, device=0x11E8)
if not edus:
    sys.exit("no edu device: run this inside `pyvfio lab run`")

with edus[0].bound("vfio-pci"), pyvfio.open_device(edus[0].name) as device:
    edu = Edu(device)
    print("edu version", edu.version, "on", device.name, "through", device.dma)
    with pyvfio.DmaBuffer(2 * 4096) as buf:
        mapping = device.dma.map(buf, dma_mask_bits=DMA_MASK_BITS)
        payload = os.urandom(1024)
        buf.write(0, payload)
        device.msi.enable()
        edu.to_device(mapping.iova, len(payload))
        edu.from_device(mapping.iova + 4096, len(payload), irq=True)
        interrupts = device.msi.wait(timeout=10)
        ok = buf.read(4096, len(payload)) == payload
        print(f"DMA round trip of {len(payload)} bytes: {'ok' if ok else 'MISMATCH'}; "
              f"MSI count {interrupts}")
        sys.exit(0 if ok else 1)
