/* vhost-net TX in C: the same loop as benchmarks/vhost_bench.py's Python split ring.
 *
 *   vhost_net_bench TAPNAME FRAME_BYTES BATCH SECONDS
 *
 * Opens /dev/net/tun (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, vnet header 12) on an
 * existing, up TAP, and /dev/vhost-net with VERSION_1|EVENT_IDX.  One memfd
 * holds the split ring (256 entries) and 256 pre-filled frame slots.  Each
 * group: BATCH descriptors, one avail->idx store after a release fence, one
 * kick, then a blocking read of the call eventfd until the group is used.
 * Prints "frames_per_s N".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
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

#define QSZ 256
#define SLOT 2048
#define HDR 12

static void die(const char *what) { perror(what); exit(1); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s TAP FRAME_BYTES BATCH SECONDS\n", argv[0]);
        return 2;
    }
    const char *tapname = argv[1];
    int frame = atoi(argv[2]), batch = atoi(argv[3]);
    double seconds = atof(argv[4]);

    int tap = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (tap < 0) die("open tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, tapname, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(tap, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    int hdr = HDR;
    if (ioctl(tap, TUNSETVNETHDRSZ, &hdr) < 0) die("TUNSETVNETHDRSZ");

    int vh = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
    if (vh < 0) die("open vhost-net");
    if (ioctl(vh, VHOST_SET_OWNER) < 0) die("SET_OWNER");
    uint64_t features = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX);
    if (ioctl(vh, VHOST_SET_FEATURES, &features) < 0) die("SET_FEATURES");

    size_t ring_bytes = 64 * 1024, size = ring_bytes + (size_t)QSZ * SLOT;
    int mfd = memfd_create("vhost-bench", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, size) < 0) die("memfd");
    char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mem == MAP_FAILED) die("mmap");
    memset(mem, 0, size);
    const uint64_t gpa = 0x100000;   /* guest-physical address of the buffer */

    struct vhost_memory *vm = calloc(1, sizeof *vm + sizeof(struct vhost_memory_region));
    vm->nregions = 1;
    vm->regions[0].guest_phys_addr = gpa;
    vm->regions[0].memory_size = size;
    vm->regions[0].userspace_addr = (uintptr_t)mem;
    if (ioctl(vh, VHOST_SET_MEM_TABLE, vm) < 0) die("SET_MEM_TABLE");

    /* vring 1 (TX): desc at 0, avail at 4 KiB, used at 8 KiB; vring 0 (RX) after it */
    struct vring_desc *desc = (void *)mem;
    struct vring_avail *avail = (void *)(mem + 4096);
    struct vring_used *used = (void *)(mem + 8192);
    uint16_t *used_event = &avail->ring[QSZ];
    int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);
    for (int q = 0; q < 2; q++) {
        size_t base = q == 1 ? 0 : 16384;
        struct vhost_vring_state num = { q, QSZ }, b = { q, 0 };
        struct vhost_vring_addr a = { .index = q,
            .desc_user_addr = (uintptr_t)(mem + base),
            .avail_user_addr = (uintptr_t)(mem + base + 4096),
            .used_user_addr = (uintptr_t)(mem + base + 8192) };
        struct vhost_vring_file k = { q, q == 1 ? kick : eventfd(0, EFD_CLOEXEC) };
        struct vhost_vring_file c = { q, q == 1 ? call : eventfd(0, EFD_CLOEXEC) };
        struct vhost_vring_file be = { q, tap };
        if (ioctl(vh, VHOST_SET_VRING_NUM, &num) < 0 || ioctl(vh, VHOST_SET_VRING_BASE, &b) < 0 ||
            ioctl(vh, VHOST_SET_VRING_ADDR, &a) < 0 || ioctl(vh, VHOST_SET_VRING_KICK, &k) < 0 ||
            ioctl(vh, VHOST_SET_VRING_CALL, &c) < 0 || ioctl(vh, VHOST_NET_SET_BACKEND, &be) < 0)
            die("vring setup");
    }
    /* pre-filled frames: zero header, broadcast, local experimental ethertype */
    for (int i = 0; i < QSZ; i++) {
        unsigned char *s = (unsigned char *)mem + ring_bytes + (size_t)i * SLOT;
        memset(s + HDR, 0xff, 6);
        memcpy(s + HDR + 6, "\x52\x54\x00\x12\x34\x56\x88\xb5", 8);
        for (int j = 14; j < frame; j++)
            s[HDR + j] = (unsigned char)(i + j);
    }
    uint16_t avail_idx = 0, last_used = 0;
    long frames = 0;
    double t0 = now(), end = t0 + seconds;
    while (now() < end) {
        for (int i = 0; i < batch; i++) {
            int d = (avail_idx + i) % QSZ;
            desc[d].addr = gpa + ring_bytes + (uint64_t)d * SLOT;
            desc[d].len = HDR + frame;
            desc[d].flags = 0;
            avail->ring[(avail_idx + i) % QSZ] = d;
        }
        __atomic_thread_fence(__ATOMIC_RELEASE);
        uint16_t old = avail_idx;
        avail_idx += batch;
        avail->idx = avail_idx;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint16_t ev = *(volatile uint16_t *)&used->ring[QSZ];   /* avail_event */
        if ((uint16_t)(avail_idx - ev - 1) < (uint16_t)(avail_idx - old)) {
            uint64_t one = 1;
            if (write(kick, &one, 8) != 8) die("kick");
        }
        while (last_used != avail_idx) {
            *used_event = last_used;
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            if (*(volatile uint16_t *)&used->idx != last_used) {
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                last_used = *(volatile uint16_t *)&used->idx;
                continue;
            }
            uint64_t n;
            if (read(call, &n, 8) != 8) die("call");
        }
        frames += batch;
    }
    double dt = now() - t0;
    printf("frames_per_s %.0f\n", frames / dt);
    return 0;
}
