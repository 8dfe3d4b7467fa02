// SPDX-License-Identifier: GPL-2.0
/*
 * uio_msi: a UIO driver for PCI devices that connects each MSI-X vector to
 * an eventfd, for userspace drivers that run without an IOMMU.
 *
 * The device appears as an ordinary UIO device (/sys/class/uio/uioN with
 * its memory BARs as maps and its I/O BARs as port regions, /dev/uioN with
 * the 4-byte interrupt count on read) and /dev/uioN gains one ioctl,
 * UIO_MSI_IRQ_SET, that attaches an eventfd to a vector (fd -1 detaches it).
 *
 *  - The device offers min(its MSI-X table size, 64) vectors; a vector past
 *    the last gives ERANGE.
 *  - MSI-X is enabled when /dev/uioN is first opened; on the last close
 *    every vector is detached and freed and MSI-X is disabled.
 *  - A device without MSI-X offers one vector: its INTx line, shared and
 *    masked in the command register when it fires.  Writing 1 (as an s32)
 *    to /dev/uioN unmasks it again, as does clearing INTX_DISABLE.
 *  - Every other ioctl gives EOPNOTSUPP.
 *  - The first open taints the kernel (TAINT_USER), as VFIO's no-IOMMU mode
 *    does: from then on a device may have written anywhere.
 *
 * The UIO core has no ioctl hook, so the driver puts a character device of
 * its own over /dev/uioN's device number (the smaller range wins the
 * lookup) and implements the UIO file operations on it itself.
 *
 * No IOMMU isolates such a device: whoever opens /dev/uioN can make it
 * write anywhere in memory.  Only root should be given the node.
 */
#include <linux/cdev.h>
#include <linux/eventfd.h>
#include <linux/fs.h>
#include <linux/interrupt.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/uio_driver.h>
#include <linux/xarray.h>

#include "uio_msi.h"

#define DRIVER_VERSION		"1.0"
#define UIO_MSI_MAX_VECTORS	64

struct uio_msi_dev;

struct uio_msi_vector {
	struct uio_msi_dev *udev;
	unsigned int index;
	int irq;			/* Linux IRQ while requested (MSI-X), else 0 */
	struct eventfd_ctx *trigger;	/* under udev->trigger_lock */
	char name[40];
};

struct uio_msi_dev {
	struct kref ref;
	struct pci_dev *pdev;
	struct uio_info info;
	struct uio_device *uio;		/* held with get_device() */
	struct cdev *cdev;
	struct mutex lock;		/* opens, removed, msix_on, vector setup */
	spinlock_t trigger_lock;	/* vec[].trigger against the handlers */
	unsigned int opens;
	bool removed;
	bool msix;			/* MSI-X capable; otherwise the INTx fallback */
	bool msix_on;
	unsigned int nvec;
	char map_names[PCI_STD_NUM_BARS][8];
	struct uio_msi_vector vec[UIO_MSI_MAX_VECTORS];
};

struct uio_msi_listener {
	struct uio_msi_dev *udev;
	s32 event_count;
};

/* minor of /dev/uioN -> device; lookups take a reference under the mutex */
static DEFINE_XARRAY(uio_msi_devices);
static DEFINE_MUTEX(uio_msi_devices_lock);

static void uio_msi_free(struct kref *ref)
{
	struct uio_msi_dev *udev = container_of(ref, struct uio_msi_dev, ref);

	put_device(&udev->uio->dev);
	pci_dev_put(udev->pdev);
	kfree(udev);
}

/* ------------------------------------------------------------------ interrupts */

static void uio_msi_signal(struct uio_msi_vector *v)
{
	struct uio_msi_dev *udev = v->udev;
	unsigned long flags;

	spin_lock_irqsave(&udev->trigger_lock, flags);
	if (v->trigger)
		eventfd_signal(v->trigger);
	spin_unlock_irqrestore(&udev->trigger_lock, flags);
}

static irqreturn_t uio_msi_vector_irq(int irq, void *arg)
{
	struct uio_msi_vector *v = arg;

	uio_msi_signal(v);
	uio_event_notify(&v->udev->info);
	return IRQ_HANDLED;
}

/* INTx fallback: called by the UIO core, which counts the event on IRQ_HANDLED */
static irqreturn_t uio_msi_intx_irq(int irq, struct uio_info *info)
{
	struct uio_msi_dev *udev = info->priv;

	if (!pci_check_and_mask_intx(udev->pdev))
		return IRQ_NONE;	/* the shared line was raised by someone else */
	uio_msi_signal(&udev->vec[0]);
	return IRQ_HANDLED;
}

static struct eventfd_ctx *uio_msi_swap_trigger(struct uio_msi_vector *v,
						struct eventfd_ctx *trigger)
{
	struct uio_msi_dev *udev = v->udev;
	struct eventfd_ctx *old;
	unsigned long flags;

	spin_lock_irqsave(&udev->trigger_lock, flags);
	old = v->trigger;
	v->trigger = trigger;
	spin_unlock_irqrestore(&udev->trigger_lock, flags);
	return old;
}

/* Attach @trigger (NULL: detach) to @v; called with udev->lock held. */
static int uio_msi_set_vector(struct uio_msi_vector *v, struct eventfd_ctx *trigger)
{
	struct uio_msi_dev *udev = v->udev;
	struct eventfd_ctx *old;
	int irq, ret;

	if (udev->msix && v->irq) {
		free_irq(v->irq, v);
		v->irq = 0;
	}
	old = uio_msi_swap_trigger(v, trigger);
	if (old)
		eventfd_ctx_put(old);
	if (!udev->msix || !trigger)
		return 0;

	irq = pci_irq_vector(udev->pdev, v->index);
	ret = irq < 0 ? irq : request_irq(irq, uio_msi_vector_irq, 0, v->name, v);
	if (ret) {
		eventfd_ctx_put(uio_msi_swap_trigger(v, NULL));
		return ret;
	}
	v->irq = irq;
	return 0;
}

/* Detach every vector and turn MSI-X off; called with udev->lock held. */
static void uio_msi_release_vectors(struct uio_msi_dev *udev)
{
	unsigned int i;

	for (i = 0; i < udev->nvec; i++)
		uio_msi_set_vector(&udev->vec[i], NULL);
	if (udev->msix_on) {
		pci_free_irq_vectors(udev->pdev);
		udev->msix_on = false;
	}
}

static long uio_msi_irq_set(struct uio_msi_dev *udev, void __user *uarg)
{
	struct uio_msi_irq_set arg;
	struct eventfd_ctx *trigger = NULL;
	int ret;

	if (copy_from_user(&arg, uarg, sizeof(arg)))
		return -EFAULT;
	if (arg.vec >= udev->nvec)	/* nvec is fixed at probe */
		return -ERANGE;
	if (arg.fd >= 0) {
		trigger = eventfd_ctx_fdget(arg.fd);
		if (IS_ERR(trigger))
			return PTR_ERR(trigger);
	} else if (arg.fd != -1) {
		return -EINVAL;
	}

	mutex_lock(&udev->lock);
	if (udev->removed) {
		ret = -ENODEV;
	} else {
		/* the vector owns the reference now (dropped if request_irq failed) */
		ret = uio_msi_set_vector(&udev->vec[arg.vec], trigger);
		trigger = NULL;
	}
	mutex_unlock(&udev->lock);
	if (trigger)
		eventfd_ctx_put(trigger);
	return ret;
}

/* ------------------------------------------------------------------ /dev/uioN */

static int uio_msi_open(struct inode *inode, struct file *file)
{
	struct uio_msi_listener *listener;
	struct uio_msi_dev *udev;
	int ret = 0;

	mutex_lock(&uio_msi_devices_lock);
	udev = xa_load(&uio_msi_devices, iminor(inode));
	if (udev)
		kref_get(&udev->ref);
	mutex_unlock(&uio_msi_devices_lock);
	if (!udev)
		return -ENODEV;

	listener = kzalloc(sizeof(*listener), GFP_KERNEL);
	if (!listener) {
		ret = -ENOMEM;
		goto err_put;
	}
	listener->udev = udev;

	mutex_lock(&udev->lock);
	if (udev->removed) {
		ret = -ENODEV;
	} else if (!udev->opens && udev->msix) {
		ret = pci_alloc_irq_vectors(udev->pdev, udev->nvec, udev->nvec, PCI_IRQ_MSIX);
		if (ret >= 0) {
			udev->msix_on = true;
			ret = 0;
		}
	}
	if (!ret && !udev->opens) {
		dev_warn_once(&udev->pdev->dev,
			      "user space drives this device's DMA without an IOMMU; tainting the kernel\n");
		add_taint(TAINT_USER, LOCKDEP_STILL_OK);
	}
	if (!ret) {
		udev->opens++;
		listener->event_count = atomic_read(&udev->uio->event);
	}
	mutex_unlock(&udev->lock);
	if (ret)
		goto err_free;

	file->private_data = listener;
	return 0;

err_free:
	kfree(listener);
err_put:
	kref_put(&udev->ref, uio_msi_free);
	return ret;
}

static int uio_msi_release(struct inode *inode, struct file *file)
{
	struct uio_msi_listener *listener = file->private_data;
	struct uio_msi_dev *udev = listener->udev;

	mutex_lock(&udev->lock);
	if (!--udev->opens)
		uio_msi_release_vectors(udev);
	mutex_unlock(&udev->lock);
	kfree(listener);
	kref_put(&udev->ref, uio_msi_free);
	return 0;
}

static ssize_t uio_msi_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	struct uio_msi_listener *listener = file->private_data;
	struct uio_msi_dev *udev = listener->udev;
	struct uio_device *uio = udev->uio;
	s32 event;
	int ret;

	if (count != sizeof(s32))
		return -EINVAL;
	if (!udev->nvec)
		return -EIO;		/* no interrupt to count */
	for (;;) {
		event = atomic_read(&uio->event);
		if (event != listener->event_count)
			break;
		if (READ_ONCE(udev->removed))
			return -EIO;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(uio->wait,
					       atomic_read(&uio->event) != listener->event_count ||
					       READ_ONCE(udev->removed));
		if (ret)
			return ret;
	}
	if (copy_to_user(buf, &event, sizeof(event)))
		return -EFAULT;
	listener->event_count = event;
	return sizeof(event);
}

static ssize_t uio_msi_write(struct file *file, const char __user *buf, size_t count,
			     loff_t *ppos)
{
	struct uio_msi_listener *listener = file->private_data;
	struct uio_msi_dev *udev = listener->udev;
	s32 irq_on;

	if (count != sizeof(s32))
		return -EINVAL;
	if (copy_from_user(&irq_on, buf, sizeof(irq_on)))
		return -EFAULT;
	if (READ_ONCE(udev->removed))
		return -ENODEV;
	if (udev->msix || !udev->nvec)
		return -ENOSYS;		/* MSI-X vectors are never masked by the driver */
	pci_intx(udev->pdev, !!irq_on);
	return sizeof(irq_on);
}

static __poll_t uio_msi_poll(struct file *file, poll_table *wait)
{
	struct uio_msi_listener *listener = file->private_data;
	struct uio_msi_dev *udev = listener->udev;

	if (!udev->nvec)
		return EPOLLERR;
	poll_wait(file, &udev->uio->wait, wait);
	if (READ_ONCE(udev->removed))
		return EPOLLERR | EPOLLHUP;
	if (listener->event_count != atomic_read(&udev->uio->event))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

/* Map N is at offset N * PAGE_SIZE of /dev/uioN, as with every UIO driver. */
static int uio_msi_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct uio_msi_listener *listener = file->private_data;
	struct uio_msi_dev *udev = listener->udev;
	struct uio_mem *mem;

	if (READ_ONCE(udev->removed))
		return -ENODEV;
	if (vma->vm_pgoff >= MAX_UIO_MAPS)
		return -EINVAL;
	mem = &udev->info.mem[vma->vm_pgoff];
	if (!mem->size)
		return -EINVAL;
	if (vma_pages(vma) > PAGE_ALIGN(mem->size) >> PAGE_SHIFT)
		return -EINVAL;
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	return io_remap_pfn_range(vma, vma->vm_start, mem->addr >> PAGE_SHIFT,
				  vma->vm_end - vma->vm_start, vma->vm_page_prot);
}

static long uio_msi_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct uio_msi_listener *listener = file->private_data;

	if (cmd != UIO_MSI_IRQ_SET)
		return -EOPNOTSUPP;
	return uio_msi_irq_set(listener->udev, (void __user *)arg);
}

static const struct file_operations uio_msi_fops = {
	.owner		= THIS_MODULE,
	.open		= uio_msi_open,
	.release	= uio_msi_release,
	.read		= uio_msi_read,
	.write		= uio_msi_write,
	.poll		= uio_msi_poll,
	.mmap		= uio_msi_mmap,
	.unlocked_ioctl	= uio_msi_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/* ------------------------------------------------------------------ PCI driver */

static void uio_msi_fill_resources(struct uio_msi_dev *udev)
{
	struct pci_dev *pdev = udev->pdev;
	unsigned int bar, nmem = 0, nport = 0;

	for (bar = 0; bar < PCI_STD_NUM_BARS; bar++) {
		resource_size_t start = pci_resource_start(pdev, bar);
		resource_size_t len = pci_resource_len(pdev, bar);
		unsigned long flags = pci_resource_flags(pdev, bar);

		if (!len)
			continue;
		snprintf(udev->map_names[bar], sizeof(udev->map_names[bar]), "BAR%u", bar);
		if ((flags & IORESOURCE_MEM) && nmem < MAX_UIO_MAPS) {
			struct uio_mem *mem = &udev->info.mem[nmem++];

			mem->name = udev->map_names[bar];
			mem->memtype = UIO_MEM_PHYS;
			mem->addr = start & PAGE_MASK;
			mem->offs = start & ~PAGE_MASK;
			mem->size = PAGE_ALIGN(mem->offs + len);
		} else if ((flags & IORESOURCE_IO) && nport < MAX_UIO_PORT_REGIONS) {
			struct uio_port *port = &udev->info.port[nport++];

			port->name = udev->map_names[bar];
			port->start = start;
			port->size = len;
			port->porttype = UIO_PORT_X86;
		}
	}
}

static int uio_msi_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct uio_msi_dev *udev;
	unsigned int i;
	int ret, count;

	udev = kzalloc(sizeof(*udev), GFP_KERNEL);
	if (!udev)
		return -ENOMEM;
	kref_init(&udev->ref);
	mutex_init(&udev->lock);
	spin_lock_init(&udev->trigger_lock);
	udev->pdev = pci_dev_get(pdev);

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_free;
	pci_set_master(pdev);

	udev->info.name = "uio_msi";
	udev->info.version = DRIVER_VERSION;
	udev->info.priv = udev;
	uio_msi_fill_resources(udev);

	count = pdev->msix_cap ? pci_msix_vec_count(pdev) : 0;
	if (count > 0) {
		udev->msix = true;
		udev->nvec = min(count, UIO_MSI_MAX_VECTORS);
		udev->info.irq = UIO_IRQ_CUSTOM;
	} else if (pdev->irq && pdev->irq != IRQ_NOTCONNECTED &&
		   pci_intx_mask_supported(pdev)) {
		udev->nvec = 1;
		udev->info.irq = pdev->irq;
		udev->info.irq_flags = IRQF_SHARED;
		udev->info.handler = uio_msi_intx_irq;
	} else {
		dev_warn(&pdev->dev, "neither MSI-X nor a maskable INTx: no interrupts\n");
		udev->info.irq = UIO_IRQ_NONE;
	}
	for (i = 0; i < udev->nvec; i++) {
		udev->vec[i].udev = udev;
		udev->vec[i].index = i;
		snprintf(udev->vec[i].name, sizeof(udev->vec[i].name), "uio_msi[%u](%s)",
			 i, pci_name(pdev));
	}

	ret = uio_register_device(&pdev->dev, &udev->info);
	if (ret)
		goto err_disable;
	udev->uio = udev->info.uio_dev;
	get_device(&udev->uio->dev);

	udev->cdev = cdev_alloc();
	if (!udev->cdev) {
		ret = -ENOMEM;
		goto err_unregister;
	}
	udev->cdev->owner = THIS_MODULE;
	udev->cdev->ops = &uio_msi_fops;
	mutex_lock(&uio_msi_devices_lock);
	ret = xa_insert(&uio_msi_devices, udev->uio->minor, udev, GFP_KERNEL);
	mutex_unlock(&uio_msi_devices_lock);
	if (ret)
		goto err_cdev;
	ret = cdev_add(udev->cdev, udev->uio->dev.devt, 1);
	if (ret)
		goto err_erase;
	pci_set_drvdata(pdev, udev);
	dev_info(&pdev->dev, "uio%d: %u %s vector%s\n", udev->uio->minor, udev->nvec,
		 udev->msix ? "MSI-X" : "INTx", udev->nvec == 1 ? "" : "s");
	return 0;

err_erase:
	mutex_lock(&uio_msi_devices_lock);
	xa_erase(&uio_msi_devices, udev->uio->minor);
	mutex_unlock(&uio_msi_devices_lock);
err_cdev:
	kobject_put(&udev->cdev->kobj);
err_unregister:
	uio_unregister_device(&udev->info);
	pci_clear_master(pdev);
	pci_disable_device(pdev);
	kref_put(&udev->ref, uio_msi_free);
	return ret;
err_disable:
	pci_clear_master(pdev);
	pci_disable_device(pdev);
err_free:
	pci_dev_put(pdev);
	kfree(udev);
	return ret;
}

static void uio_msi_remove(struct pci_dev *pdev)
{
	struct uio_msi_dev *udev = pci_get_drvdata(pdev);

	cdev_del(udev->cdev);
	mutex_lock(&uio_msi_devices_lock);
	xa_erase(&uio_msi_devices, udev->uio->minor);
	mutex_unlock(&uio_msi_devices_lock);

	mutex_lock(&udev->lock);
	udev->removed = true;
	uio_msi_release_vectors(udev);
	mutex_unlock(&udev->lock);
	wake_up_interruptible(&udev->uio->wait);

	uio_unregister_device(&udev->info);
	pci_clear_master(pdev);
	pci_disable_device(pdev);
	pci_set_drvdata(pdev, NULL);
	kref_put(&udev->ref, uio_msi_free);
}

static struct pci_driver uio_msi_driver = {
	.name		= "uio_msi",
	.id_table	= NULL,		/* bind through driver_override or new_id */
	.probe		= uio_msi_probe,
	.remove		= uio_msi_remove,
};

module_pci_driver(uio_msi_driver);

MODULE_VERSION(DRIVER_VERSION);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("UIO driver for PCI devices with MSI-X vectors connected to eventfds");
