/* 4 KiB virtio-blk requests through /dev/vhost-vdpa-N, timed in C: the baseline for
 * benchmarks/vdpa_bench.py.
 *
 *   vdpa_blk_bench /dev/vhost-vdpa-N write|read QUEUE_DEPTH SECONDS
 *
 * Same work per request as the Python loop: the status protocol and one split ring of 128
 * descriptors over memfd memory mapped at IOVA 0x100000 by one IOTLB v2 message; each
 * request is a 3-descriptor chain (header, 4 KiB of data, status) prepared once; a batch of
 * QUEUE_DEPTH requests is one avail publish and one kick, then a blocking read of the call
 * eventfd until the whole batch is used.  Prints one JSON object.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/vhost.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#define QSIZE 128
#define MEMSIZE (4u << 20)
#define IOVA 0x100000ull
#define OFF_DESC 0
#define OFF_AVAIL 4096
#define OFF_USED 8192
#define OFF_HDR 16384
#define OFF_STATUS 20480
#define OFF_DATA 65536

static void die(const char *what)
{
	fprintf(stderr, "vdpa_blk_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	if (ioctl(fd, req, arg) < 0)
		die(what);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s /dev/vhost-vdpa-N write|read QUEUE_DEPTH SECONDS\n", argv[0]);
		return 2;
	}
	int is_write = strcmp(argv[2], "write") == 0;
	int qd = atoi(argv[3]);
	double seconds = atof(argv[4]);
	if (qd < 1 || qd * 3 > QSIZE)
		qd = 1;

	int fd = open(argv[1], O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open");
	xioctl(fd, VHOST_SET_OWNER, NULL, "VHOST_SET_OWNER");
	uint64_t bf = 1ull << VHOST_BACKEND_F_IOTLB_MSG_V2;
	xioctl(fd, VHOST_SET_BACKEND_FEATURES, &bf, "VHOST_SET_BACKEND_FEATURES");
	uint8_t st = 0;
	xioctl(fd, VHOST_VDPA_SET_STATUS, &st, "reset");
	st = VIRTIO_CONFIG_S_ACKNOWLEDGE;
	xioctl(fd, VHOST_VDPA_SET_STATUS, &st, "ACKNOWLEDGE");
	st |= VIRTIO_CONFIG_S_DRIVER;
	xioctl(fd, VHOST_VDPA_SET_STATUS, &st, "DRIVER");
	uint64_t features = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_ACCESS_PLATFORM);
	xioctl(fd, VHOST_SET_FEATURES, &features, "VHOST_SET_FEATURES");
	st |= VIRTIO_CONFIG_S_FEATURES_OK;
	xioctl(fd, VHOST_VDPA_SET_STATUS, &st, "FEATURES_OK");

	int mfd = memfd_create("vdpa-bench", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, MEMSIZE) < 0)
		die("memfd");
	char *mem = mmap(NULL, MEMSIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	memset(mem, 0, MEMSIZE);
	struct vhost_msg_v2 msg = { .type = VHOST_IOTLB_MSG_V2 };
	msg.iotlb.iova = IOVA;
	msg.iotlb.size = MEMSIZE;
	msg.iotlb.uaddr = (uint64_t)(uintptr_t)mem;
	msg.iotlb.perm = VHOST_ACCESS_RW;
	msg.iotlb.type = VHOST_IOTLB_UPDATE;
	if (write(fd, &msg, sizeof(msg)) != sizeof(msg))
		die("IOTLB update");

	struct vring_desc *desc = (void *)(mem + OFF_DESC);
	struct vring_avail *avail = (void *)(mem + OFF_AVAIL);
	struct vring_used *used = (void *)(mem + OFF_USED);
	for (int i = 0; i < qd; i++) {
		struct virtio_blk_outhdr *h = (void *)(mem + OFF_HDR + 16 * i);
		h->type = is_write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
		h->sector = 8ull * i;
		desc[3 * i] = (struct vring_desc){ IOVA + OFF_HDR + 16 * i, 16, VRING_DESC_F_NEXT, 3 * i + 1 };
		desc[3 * i + 1] = (struct vring_desc){ IOVA + OFF_DATA + 4096 * i, 4096,
			VRING_DESC_F_NEXT | (is_write ? 0 : VRING_DESC_F_WRITE), 3 * i + 2 };
		desc[3 * i + 2] = (struct vring_desc){ IOVA + OFF_STATUS + i, 1, VRING_DESC_F_WRITE, 0 };
		memset(mem + OFF_DATA + 4096 * i, 0x5a, 4096);
	}
	int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);
	struct vhost_vring_state s = { 0, QSIZE };
	xioctl(fd, VHOST_SET_VRING_NUM, &s, "VHOST_SET_VRING_NUM");
	s.num = 0;
	xioctl(fd, VHOST_SET_VRING_BASE, &s, "VHOST_SET_VRING_BASE");
	struct vhost_vring_addr a = { .index = 0, .desc_user_addr = IOVA + OFF_DESC,
		.avail_user_addr = IOVA + OFF_AVAIL, .used_user_addr = IOVA + OFF_USED };
	xioctl(fd, VHOST_SET_VRING_ADDR, &a, "VHOST_SET_VRING_ADDR");
	struct vhost_vring_file f = { 0, kick };
	xioctl(fd, VHOST_SET_VRING_KICK, &f, "VHOST_SET_VRING_KICK");
	f.fd = call;
	xioctl(fd, VHOST_SET_VRING_CALL, &f, "VHOST_SET_VRING_CALL");
	s.num = 1;
	xioctl(fd, VHOST_VDPA_SET_VRING_ENABLE, &s, "VHOST_VDPA_SET_VRING_ENABLE");
	st |= VIRTIO_CONFIG_S_DRIVER_OK;
	xioctl(fd, VHOST_VDPA_SET_STATUS, &st, "DRIVER_OK");

	uint16_t avail_idx = 0;
	long done = 0, errors = 0;
	double start = now(), end = start + seconds, t;
	do {
		for (int i = 0; i < qd; i++)
			avail->ring[(avail_idx + i) % QSIZE] = 3 * i;
		avail_idx += qd;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		avail->idx = avail_idx;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		uint64_t one = 1, n;
		if (write(kick, &one, 8) != 8)
			die("kick");
		while (__atomic_load_n(&used->idx, __ATOMIC_ACQUIRE) != avail_idx)
			if (read(call, &n, 8) != 8)
				die("call");
		for (int i = 0; i < qd; i++)
			errors += mem[OFF_STATUS + i] != VIRTIO_BLK_S_OK;
		done += qd;
		t = now();
	} while (t < end);
	printf("{\"requests\": %ld, \"seconds\": %.6f, \"iops\": %.1f, \"errors\": %ld, "
	       "\"queue_depth\": %d, \"op\": \"%s\"}\n",
	       done, t - start, done / (t - start), errors, qd, argv[2]);
	close(fd);
	return errors ? 1 : 0;
}
