/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * uio_msi: user-space interface of the UIO driver for PCI devices with
 * MSI-X, which binds a userspace eventfd to each vector.
 *
 * This driver was proposed for Linux but never merged, so no kernel ships
 * this header; pyvfio carries this description of its ABI.
 *
 * The ioctl is issued on /dev/uioN:
 *   UIO_MSI_IRQ_SET   attach the eventfd `fd` to MSI-X vector `vec`;
 *                     fd == -1 detaches the vector.
 */
#ifndef _UIO_MSI_H
#define _UIO_MSI_H

#include <linux/ioctl.h>
#include <linux/types.h>

struct uio_msi_irq_set {
	__u32 vec;
	int fd;
};

#define UIO_MSI_BASE	0x86
#define UIO_MSI_IRQ_SET	_IOW('I', UIO_MSI_BASE + 1, struct uio_msi_irq_set)

#endif /* _UIO_MSI_H */
