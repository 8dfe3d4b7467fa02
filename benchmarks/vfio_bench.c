/*
 * The C baseline of pyvfio's benchmarks: the same VFIO operations as
 * benchmarks/run.py measures in Python, written the way a C driver would.
 *
 * Build: cc -O2 -o vfio_bench vfio_bench.c   (run.py does this at run time)
 *
 * Usage:
 *   vfio_bench --group /dev/vfio/N --bdf DDDD:BB:DD.F [options]
 *   vfio_bench --no-device [options]           only the device-free benchmarks
 * Options:
 *   --target-ms MS   time one repetition should take (default 150)
 *   --calib-ms MS    calibration threshold (default 20)
 *   --reps N         repetitions; the median is reported (default 5)
 *   --iova ADDR      IOVA for the DMA benchmarks (default 0x100000)
 *   --only A,B,...   run only the named benchmarks
 *   --dma-4k-fd FD, --dma-2m-fd FD, --dma-huge-fd FD
 *                    map these (inherited, already populated) memfds as the
 *                    DMA buffers instead of allocating anonymous memory, so
 *                    that the same physical pages are mapped as in the
 *                    Python run
 *
 * Output (stdout, one JSON object):
 *   {"iommu": "...", "dma_2m_physical_runs": R, "benchmarks": {NAME:
 *    {"ns_per_op": median, "iterations": N, "samples": [ns/op of each
 *    repetition]}, ...}}
 * R is how many physically contiguous runs the 2 MiB buffer's pages form (-1:
 * unknown).  dma_2m_huge is measured only when a 2 MiB huge page is free.
 * Diagnostics go to stderr; a failed setup step exits with status 1.
 *
 * The device must be bound to vfio-pci and its group not open elsewhere.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/vfio.h>

#define EDU_ID          0x00
#define EDU_LIVENESS    0x04
#define EDU_IRQ_RAISE   0x60
#define EDU_IRQ_ACK     0x64

static int container = -1, group = -1, device = -1, efd = -1;
static int pipe_fds[2] = { -1, -1 };
static volatile uint32_t *bar0;
static size_t bar0_size;
static uint64_t dma_iova = 0x100000;
static void *dma_4k, *dma_2m, *dma_huge;
static const char *iommu_name = "none";
static int dma_2m_runs = -1;		/* physically contiguous runs of dma_2m */
static int dma_4k_fd = -1, dma_2m_fd = -1, dma_huge_fd = -1;
static volatile uint32_t sink;

static void die(const char *what)
{
	fprintf(stderr, "vfio_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the benchmarks: each runs n iterations and returns elapsed ns ---- */

static int64_t b_pipe_fionread(long n)
{
	int avail;
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++)
		if (ioctl(pipe_fds[0], FIONREAD, &avail) < 0)
			die("FIONREAD");
	return now_ns() - t0;
}

static int64_t b_check_extension(long n)
{
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++)
		if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) < 0)
			die("VFIO_CHECK_EXTENSION");
	return now_ns() - t0;
}

static int64_t b_irq_info(long n)
{
	struct vfio_irq_info info;
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++) {
		info.argsz = sizeof(info);
		info.flags = 0;
		info.index = VFIO_PCI_MSI_IRQ_INDEX;
		info.count = 0;
		if (ioctl(device, VFIO_DEVICE_GET_IRQ_INFO, &info) < 0)
			die("VFIO_DEVICE_GET_IRQ_INFO");
		sink = info.count;
	}
	return now_ns() - t0;
}

static int64_t b_group_status(long n)
{
	struct vfio_group_status st;
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++) {
		st.argsz = sizeof(st);
		st.flags = 0;
		if (ioctl(group, VFIO_GROUP_GET_STATUS, &st) < 0)
			die("VFIO_GROUP_GET_STATUS");
		sink = st.flags;
	}
	return now_ns() - t0;
}

static int64_t b_mmio_read32(long n)
{
	uint32_t acc = 0;
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++)
		acc += bar0[EDU_ID / 4];
	sink = acc;
	return now_ns() - t0;
}

static int64_t b_mmio_write32(long n)
{
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++)
		bar0[EDU_LIVENESS / 4] = 0x5a5a5a5a;
	return now_ns() - t0;
}

static int64_t dma_map_unmap(void *buf, uint64_t size, long n)
{
	struct vfio_iommu_type1_dma_map map;
	struct vfio_iommu_type1_dma_unmap unmap;
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++) {
		memset(&map, 0, sizeof(map));
		map.argsz = sizeof(map);
		map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
		map.vaddr = (uintptr_t)buf;
		map.iova = dma_iova;
		map.size = size;
		if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) < 0)
			die("VFIO_IOMMU_MAP_DMA");
		memset(&unmap, 0, sizeof(unmap));
		unmap.argsz = sizeof(unmap);
		unmap.iova = dma_iova;
		unmap.size = size;
		if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) < 0)
			die("VFIO_IOMMU_UNMAP_DMA");
	}
	return now_ns() - t0;
}

static int64_t b_dma_4k(long n)
{
	return dma_map_unmap(dma_4k, 4096, n);
}

static int64_t b_dma_2m(long n)
{
	return dma_map_unmap(dma_2m, 2 << 20, n);
}

static int64_t b_dma_huge(long n)
{
	return dma_map_unmap(dma_huge, 2 << 20, n);
}

static void wait_eventfd(void)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t count;

	for (;;) {
		int r = poll(&p, 1, 5000);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("poll");
		if (r == 0) {
			errno = ETIMEDOUT;
			die("waiting for the MSI eventfd");
		}
		if (read(efd, &count, sizeof(count)) == sizeof(count))
			return;
		if (errno != EAGAIN)
			die("read eventfd");
	}
}

static int64_t b_irq_trigger(long n)
{
	struct vfio_irq_set set = {
		.argsz = sizeof(set),
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
		.index = VFIO_PCI_MSI_IRQ_INDEX,
		.start = 0,
		.count = 1,
	};
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++) {
		if (ioctl(device, VFIO_DEVICE_SET_IRQS, &set) < 0)
			die("VFIO_DEVICE_SET_IRQS trigger");
		wait_eventfd();
	}
	return now_ns() - t0;
}

static int64_t b_irq_edu(long n)
{
	int64_t t0 = now_ns();

	for (long i = 0; i < n; i++) {
		bar0[EDU_IRQ_RAISE / 4] = 1;
		wait_eventfd();
		bar0[EDU_IRQ_ACK / 4] = 1;
	}
	return now_ns() - t0;
}

/* ---- setup ---- */

/*
 * How many physically contiguous runs the pages of [buf, buf+size) form
 * (-1 if /proc/self/pagemap does not tell): type1 maps each run with one
 * IOMMU mapping, so this decides much of what a map costs.
 */
static int physical_runs(const void *buf, size_t size)
{
	long page = sysconf(_SC_PAGESIZE);
	uint64_t entry, pfn, prev = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC), runs = 0;

	if (fd < 0)
		return -1;
	for (size_t off = 0; off < size; off += page) {
		uintptr_t va = (uintptr_t)buf + off;

		if (pread(fd, &entry, 8, (off_t)(va / page) * 8) != 8 || !(entry >> 63)) {
			runs = -1;
			break;
		}
		pfn = entry & ((1ULL << 55) - 1);
		if (!pfn) {
			runs = -1;
			break;
		}
		if (off == 0 || pfn != prev + 1)
			runs++;
		prev = pfn;
	}
	close(fd);
	return runs;
}

/* A DMA buffer: the memfd ``fd`` mapped, or new anonymous memory, populated. */
static void *dma_buffer(size_t size, int fd, int flags)
{
	void *p;

	if (fd >= 0)
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	else
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | flags,
			 -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (fd < 0) {
		memset(p, 0, size);	/* fault the pages in before timing */
	} else {
		for (size_t off = 0; off < size; off += 4096)	/* map them in */
			sink += ((volatile uint8_t *)p)[off];
	}
	return p;
}

static void setup_device(const char *group_path, const char *bdf)
{
	struct vfio_group_status status = { .argsz = sizeof(status) };
	struct vfio_region_info reg = { .argsz = sizeof(reg) };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg) };
	struct {
		struct vfio_irq_set set;
		int32_t fd;
	} irq;
	uint16_t cmd;

	container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (container < 0)
		die("open /dev/vfio/vfio");
	if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		die("VFIO_GET_API_VERSION");
	group = open(group_path, O_RDWR | O_CLOEXEC);
	if (group < 0)
		die(group_path);
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0)
		die("VFIO_GROUP_GET_STATUS");
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
		errno = EBUSY;
		die("group not viable");
	}
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0)
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0) {
		if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
			die("VFIO_SET_IOMMU type1v2");
		iommu_name = "type1v2";
	} else {
		if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) < 0)
			die("VFIO_SET_IOMMU type1");
		iommu_name = "type1";
	}
	device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (device < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");

	/* memory space and bus mastering on: MSI is a bus-master write */
	cfg.index = VFIO_PCI_CONFIG_REGION_INDEX;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &cfg) < 0)
		die("VFIO_DEVICE_GET_REGION_INFO config");
	if (pread(device, &cmd, 2, cfg.offset + 4) != 2)
		die("pread PCI_COMMAND");
	cmd |= 0x6;
	if (pwrite(device, &cmd, 2, cfg.offset + 4) != 2)
		die("pwrite PCI_COMMAND");

	reg.index = VFIO_PCI_BAR0_REGION_INDEX;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &reg) < 0)
		die("VFIO_DEVICE_GET_REGION_INFO BAR0");
	if (!(reg.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
		errno = ENOTSUP;
		die("BAR0 is not mappable");
	}
	bar0_size = reg.size;
	bar0 = mmap(NULL, reg.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, reg.offset);
	if (bar0 == MAP_FAILED)
		die("mmap BAR0");
	if ((bar0[EDU_ID / 4] & 0xff) != 0xed) {
		errno = ENODEV;
		die("not an edu device");
	}
	bar0[EDU_LIVENESS / 4] = 0x12345678;
	if (bar0[EDU_LIVENESS / 4] != 0xedcba987) {
		errno = EIO;
		die("edu liveness check");
	}

	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (efd < 0)
		die("eventfd");
	memset(&irq, 0, sizeof(irq));
	irq.set.argsz = sizeof(irq);
	irq.set.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	irq.set.index = VFIO_PCI_MSI_IRQ_INDEX;
	irq.set.start = 0;
	irq.set.count = 1;
	irq.fd = efd;
	if (ioctl(device, VFIO_DEVICE_SET_IRQS, &irq) < 0)
		die("VFIO_DEVICE_SET_IRQS enable MSI");

	dma_4k = dma_buffer(4096, dma_4k_fd, 0);
	dma_2m = dma_buffer(2 << 20, dma_2m_fd, 0);
	if (!dma_4k || !dma_2m)
		die("mmap DMA buffers");
	dma_2m_runs = physical_runs(dma_2m, 2 << 20);
	/* one 2 MiB huge page, if the system has one reserved */
	dma_huge = dma_buffer(2 << 20, dma_huge_fd, MAP_HUGETLB);
	if (!dma_huge)
		fprintf(stderr, "vfio_bench: no 2 MiB huge page (%s): dma_2m_huge skipped\n",
			strerror(errno));
}

static void teardown_device(void)
{
	struct vfio_irq_set off = {
		.argsz = sizeof(off),
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
		.index = VFIO_PCI_MSI_IRQ_INDEX,
	};

	ioctl(device, VFIO_DEVICE_SET_IRQS, &off);
	close(efd);
	munmap((void *)bar0, bar0_size);
	munmap(dma_4k, 4096);
	munmap(dma_2m, 2 << 20);
	if (dma_huge)
		munmap(dma_huge, 2 << 20);
	close(device);
	ioctl(group, VFIO_GROUP_UNSET_CONTAINER);
	close(group);
	close(container);
}

/* ---- measurement: calibrate, warm up, median of reps ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int first = 1;
static const char *only;

static int wanted(const char *name)
{
	size_t len = strlen(name);

	for (const char *p = only; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : "") {
		if (!strncmp(p, name, len) && (p[len] == ',' || p[len] == '\0'))
			return 1;
	}
	return !only;
}

static void measure(const char *name, int64_t (*fn)(long), int64_t target_ns,
		    int64_t calib_ns, int reps)
{
	double samples[64], sorted[64];
	long n = 1, iters;
	int64_t t;

	if (!wanted(name))
		return;
	for (;;) {			/* calibration doubles as warm-up */
		t = fn(n);
		if (t >= calib_ns || n >= (1L << 40))
			break;
		n *= 2;
	}
	iters = (long)((double)target_ns * n / (t > 0 ? t : 1));
	if (iters < 1)
		iters = 1;
	fn(iters / 10 > 0 ? iters / 10 : 1);
	for (int r = 0; r < reps; r++)
		samples[r] = (double)fn(iters) / iters;
	memcpy(sorted, samples, sizeof(double) * reps);
	qsort(sorted, reps, sizeof(double), cmp_double);

	printf("%s\n    \"%s\": {\"ns_per_op\": %.3f, \"iterations\": %ld, \"samples\": [",
	       first ? "" : ",", name, sorted[reps / 2], iters);
	for (int r = 0; r < reps; r++)
		printf("%s%.3f", r ? ", " : "", samples[r]);
	printf("]}");
	fflush(stdout);
	first = 0;
}

int main(int argc, char **argv)
{
	const char *group_path = NULL, *bdf = NULL;
	int64_t target_ns = 150000000, calib_ns = 20000000;
	int reps = 5, no_device = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "--no-device")) {
			no_device = 1;
			continue;
		}
		if (!v) {
			fprintf(stderr, "vfio_bench: %s needs a value\n", a);
			return 2;
		}
		i++;
		if (!strcmp(a, "--group"))
			group_path = v;
		else if (!strcmp(a, "--bdf"))
			bdf = v;
		else if (!strcmp(a, "--target-ms"))
			target_ns = (int64_t)(strtod(v, NULL) * 1e6);
		else if (!strcmp(a, "--calib-ms"))
			calib_ns = (int64_t)(strtod(v, NULL) * 1e6);
		else if (!strcmp(a, "--reps"))
			reps = atoi(v);
		else if (!strcmp(a, "--iova"))
			dma_iova = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--only"))
			only = v;
		else if (!strcmp(a, "--dma-4k-fd"))
			dma_4k_fd = atoi(v);
		else if (!strcmp(a, "--dma-2m-fd"))
			dma_2m_fd = atoi(v);
		else if (!strcmp(a, "--dma-huge-fd"))
			dma_huge_fd = atoi(v);
		else {
			fprintf(stderr, "vfio_bench: unknown option %s\n", a);
			return 2;
		}
	}
	if (reps < 1 || reps > 64) {
		fprintf(stderr, "vfio_bench: --reps must be 1..64\n");
		return 2;
	}
	if (!no_device && (!group_path || !bdf)) {
		fprintf(stderr, "vfio_bench: --group and --bdf are needed (or --no-device)\n");
		return 2;
	}
	if (pipe(pipe_fds) < 0)
		die("pipe");
	if (!no_device)
		setup_device(group_path, bdf);

	printf("{\"iommu\": \"%s\", \"dma_2m_physical_runs\": %d, \"benchmarks\": {",
	       no_device ? "none" : iommu_name, dma_2m_runs);
	measure("pipe_fionread", b_pipe_fionread, target_ns, calib_ns, reps);
	if (!no_device) {
		measure("check_extension", b_check_extension, target_ns, calib_ns, reps);
		measure("irq_info", b_irq_info, target_ns, calib_ns, reps);
		measure("group_status", b_group_status, target_ns, calib_ns, reps);
		measure("mmio_read32", b_mmio_read32, target_ns, calib_ns, reps);
		measure("mmio_write32", b_mmio_write32, target_ns, calib_ns, reps);
		measure("dma_4k", b_dma_4k, target_ns, calib_ns, reps);
		measure("dma_2m", b_dma_2m, target_ns, calib_ns, reps);
		if (dma_huge)
			measure("dma_2m_huge", b_dma_huge, target_ns, calib_ns, reps);
		measure("irq_trigger", b_irq_trigger, target_ns, calib_ns, reps);
		measure("irq_edu", b_irq_edu, target_ns, calib_ns, reps);
		teardown_device();
	}
	printf("\n}}\n");
	return 0;
}
