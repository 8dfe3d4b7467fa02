// SPDX-License-Identifier: GPL-2.0
/*
 * The C baseline of benchmarks/uio_irq.py: the NVMe admin round trip
 * (doorbell -> Get Features completes -> MSI-X vector 0 -> eventfd wakes ->
 * completion reaped) through uio_msi, with plain syscalls and volatile MMIO.
 *
 *   uio_irq_bench /dev/uioN /sys/bus/pci/devices/BDF/config ITERATIONS REPS
 *
 * prints one line per repetition: "ns_per_op <n>".
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

#include "uio_msi.h"

#define PAGE 4096
#define DEPTH 32

static volatile uint8_t *bar;
static uint32_t dstrd;

static void die(const char *what)
{
	fprintf(stderr, "uio_irq_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint32_t rd32(uint32_t off) { return *(volatile uint32_t *)(bar + off); }
static void wr32(uint32_t off, uint32_t v) { *(volatile uint32_t *)(bar + off) = v; }
static void wr64(uint32_t off, uint64_t v) { wr32(off, (uint32_t)v); wr32(off + 4, v >> 32); }

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t phys_of(void *p)
{
	uint64_t entry;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &entry, 8, ((uintptr_t)p / PAGE) * 8) != 8)
		die("pagemap");
	close(fd);
	if (!(entry >> 63) || !(entry & ((1ull << 55) - 1))) {
		errno = EPERM;
		die("pagemap shows no frame (run as root)");
	}
	return (entry & ((1ull << 55) - 1)) * PAGE;
}

static void wait_rdy(uint32_t want)
{
	uint64_t deadline = now_ns() + 10000000000ull;

	while ((rd32(0x1c) & 1) != want)
		if (now_ns() > deadline) {
			errno = ETIMEDOUT;
			die("CSTS.RDY");
		}
}

int main(int argc, char **argv)
{
	struct uio_msi_irq_set set;
	uint8_t *sq, *cq;
	uint32_t tail = 0, head = 0, phase = 1, cid = 0;
	int fd, cfg, efd, iters, reps;
	uint16_t cmd;

	if (argc != 5) {
		fprintf(stderr, "usage: %s /dev/uioN CONFIG ITERATIONS REPS\n", argv[0]);
		return 2;
	}
	iters = atoi(argv[3]);
	reps = atoi(argv[4]);
	fd = open(argv[1], O_RDWR);
	if (fd < 0)
		die(argv[1]);
	bar = mmap(NULL, 0x4000, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED)
		die("mmap map 0");
	cfg = open(argv[2], O_RDWR);
	if (cfg < 0 || pread(cfg, &cmd, 2, 4) != 2)
		die(argv[2]);
	cmd |= 0x6;					/* memory space, bus master */
	if (pwrite(cfg, &cmd, 2, 4) != 2)
		die("command register");

	sq = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sq == MAP_FAILED || mlock(sq, 2 * PAGE))
		die("queue memory");
	memset(sq, 0, 2 * PAGE);
	cq = sq + PAGE;
	dstrd = 4u << ((*(volatile uint64_t *)bar >> 32) & 0xf);

	wr32(0x14, 0);					/* CC.EN = 0 */
	wait_rdy(0);
	wr32(0x24, (DEPTH - 1) << 16 | (DEPTH - 1));
	wr64(0x28, phys_of(sq));
	wr64(0x30, phys_of(cq));
	wr32(0x14, 1 | 6 << 16 | 4 << 20);		/* EN, 64-byte SQEs, 16-byte CQEs */
	wait_rdy(1);

	efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	set.vec = 0;
	set.fd = efd;
	if (efd < 0 || ioctl(fd, UIO_MSI_IRQ_SET, &set))
		die("UIO_MSI_IRQ_SET");

	for (int r = 0; r < reps + 1; r++) {		/* the first repetition warms up */
		uint64_t t0 = now_ns();

		for (int i = 0; i < iters; i++) {
			uint32_t *sqe = (uint32_t *)(sq + tail * 64);
			struct pollfd p = { .fd = efd, .events = POLLIN };
			volatile uint32_t *cqe;
			uint64_t count;

			memset(sqe, 0, 64);
			sqe[0] = 0x0a | (cid++ & 0xffff) << 16;	/* Get Features */
			sqe[10] = 0x07;				/* Number of Queues */
			tail = (tail + 1) % DEPTH;
			__sync_synchronize();
			wr32(0x1000, tail);
			for (;;) {			/* sleep until vector 0 fires, then look */
				if (poll(&p, 1, 10000) != 1) {
					errno = ETIMEDOUT;
					die("MSI-X vector 0");
				}
				if (read(efd, &count, 8) != 8 && errno != EAGAIN)
					die("eventfd");
				cqe = (volatile uint32_t *)(cq + head * 16);
				if (((cqe[3] >> 16) & 1) == phase)
					break;
			}
			if ((cqe[3] >> 17) & 0xff)
				die("Get Features failed");
			if (++head == DEPTH) {
				head = 0;
				phase ^= 1;
			}
			wr32(0x1000 + dstrd, head);
		}
		if (r)
			printf("ns_per_op %llu\n", (unsigned long long)((now_ns() - t0) / iters));
	}

	set.fd = -1;
	ioctl(fd, UIO_MSI_IRQ_SET, &set);
	wr32(0x14, 0);
	wait_rdy(0);
	close(efd);
	return 0;
}
