/* KVM baseline for benchmarks/kvm_bench.py: the same operations in plain C.
 *
 * usage: kvm_bench N_RUN N_REG REG_ID   -> prints "run_ns=..", "get_ns=..", "set_ns=.."
 * A real-mode guest loops on `out 0x10, al; jmp .-2`: every KVM_RUN returns
 * with an IO exit.  ONE_REG reads and writes REG_ID (0 skips them).
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	long nrun = argc > 1 ? atol(argv[1]) : 100000;
	long nreg = argc > 2 ? atol(argv[2]) : 100000;
	uint64_t reg_id = argc > 3 ? strtoull(argv[3], NULL, 0) : 0;
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	size_t memsz = 0x10000;
	uint8_t *mem = mmap(NULL, memsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	static const uint8_t code[] = { 0xe6, 0x10, 0xeb, 0xfc };	/* out 0x10,al; jmp .-2 */
	memcpy(mem + 0x1000, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = memsz,
		.userspace_addr = (uintptr_t)mem };
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	struct kvm_segment *segs[] = { &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss };
	for (unsigned i = 0; i < 6; i++) {
		segs[i]->base = 0;
		segs[i]->selector = 0;
	}
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 2, .rsp = 0x3000 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	unsigned long ios = 0;
	uint64_t t0 = now_ns();
	for (long i = 0; i < nrun; i++) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10)
			ios++;
	}
	uint64_t t1 = now_ns();
	if (ios != (unsigned long)nrun) {
		fprintf(stderr, "expected %ld IO exits, got %lu\n", nrun, ios);
		return 1;
	}
	printf("run_ns=%.1f\n", (double)(t1 - t0) / nrun);

	if (reg_id) {
		uint64_t val = 0;
		struct kvm_one_reg one = { .id = reg_id, .addr = (uintptr_t)&val };
		t0 = now_ns();
		for (long i = 0; i < nreg; i++)
			if (ioctl(vcpu, KVM_GET_ONE_REG, &one) < 0)
				die("KVM_GET_ONE_REG");
		t1 = now_ns();
		printf("get_ns=%.1f\n", (double)(t1 - t0) / nreg);
		t0 = now_ns();
		for (long i = 0; i < nreg; i++) {
			val = (uint64_t)i & 0xffff;
			if (ioctl(vcpu, KVM_SET_ONE_REG, &one) < 0)
				die("KVM_SET_ONE_REG");
		}
		t1 = now_ns();
		printf("set_ns=%.1f\n", (double)(t1 - t0) / nreg);
	}
	return 0;
}
