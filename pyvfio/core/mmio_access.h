/* pyvfio's memory-mapped I/O accessors, shared by the cffi binding
 * (pyvfio.core._uapi, built by _build_uapi.py) and the CPython extension
 * pyvfio.core._mmio (_mmio.c).
 *
 * Each accessor is ONE volatile load or store of its width: the compiler,
 * not Python's or libc's memcpy (which copies 4..7 bytes with two
 * overlapping stores), chooses the instruction.  The bulk copies make
 * n/width such accesses in address order.  The barriers are chosen per
 * architecture.
 */
#ifndef PYVFIO_MMIO_ACCESS_H
#define PYVFIO_MMIO_ACCESS_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* mb: every earlier load and store (memory and MMIO) before every later one.
 * rmb/wmb: the same for loads / for stores only.  dma_rmb/dma_wmb: ordering
 * between accesses to coherent DMA memory only (cheaper where the CPU allows). */
#if defined(__x86_64__) || defined(__i386__)
#define PYVFIO_BARRIER_ARCH "x86"
#define PYVFIO_MB() __asm__ __volatile__("mfence" ::: "memory")
#define PYVFIO_RMB() __asm__ __volatile__("lfence" ::: "memory")
#define PYVFIO_WMB() __asm__ __volatile__("sfence" ::: "memory")
#define PYVFIO_DMA_RMB() __asm__ __volatile__("" ::: "memory")   /* TSO: loads stay in order */
#define PYVFIO_DMA_WMB() __asm__ __volatile__("" ::: "memory")   /* TSO: stores stay in order */
#elif defined(__aarch64__)
#define PYVFIO_BARRIER_ARCH "arm64"
#define PYVFIO_MB() __asm__ __volatile__("dsb sy" ::: "memory")
#define PYVFIO_RMB() __asm__ __volatile__("dsb ld" ::: "memory")
#define PYVFIO_WMB() __asm__ __volatile__("dsb st" ::: "memory")
#define PYVFIO_DMA_RMB() __asm__ __volatile__("dmb oshld" ::: "memory")
#define PYVFIO_DMA_WMB() __asm__ __volatile__("dmb oshst" ::: "memory")
#elif defined(__powerpc64__) || defined(__powerpc__)
#define PYVFIO_BARRIER_ARCH "ppc64"
#define PYVFIO_MB() __asm__ __volatile__("sync" ::: "memory")
#define PYVFIO_RMB() __asm__ __volatile__("sync" ::: "memory")
#define PYVFIO_WMB() __asm__ __volatile__("sync" ::: "memory")
#define PYVFIO_DMA_RMB() __asm__ __volatile__("lwsync" ::: "memory")
#define PYVFIO_DMA_WMB() __asm__ __volatile__("lwsync" ::: "memory")
#elif defined(__riscv)
#define PYVFIO_BARRIER_ARCH "riscv"
#define PYVFIO_MB() __asm__ __volatile__("fence iorw,iorw" ::: "memory")
#define PYVFIO_RMB() __asm__ __volatile__("fence ir,ir" ::: "memory")
#define PYVFIO_WMB() __asm__ __volatile__("fence ow,ow" ::: "memory")
#define PYVFIO_DMA_RMB() __asm__ __volatile__("fence r,r" ::: "memory")
#define PYVFIO_DMA_WMB() __asm__ __volatile__("fence w,w" ::: "memory")
#else
#define PYVFIO_BARRIER_ARCH "generic"
#define PYVFIO_MB() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define PYVFIO_RMB() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define PYVFIO_WMB() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define PYVFIO_DMA_RMB() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define PYVFIO_DMA_WMB() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif

#if defined(__powerpc64__) || defined(__powerpc__)
/* ppc: order successive accesses to cache-inhibited (MMIO) storage */
#define PYVFIO_IO_ORDER() __asm__ __volatile__("eieio" ::: "memory")
#else
#define PYVFIO_IO_ORDER() do { } while (0)
#endif

#define PYVFIO_ADDR(base, off) ((volatile char *)(base) + (off))

#if defined(__aarch64__)
/* Plain register addressing, no writeback: a hypervisor that emulates the
 * access gets a valid syndrome (the compiler might pick post-index forms). */
#define PYVFIO_LD(T, insn, reg)                                                   \
    static inline T pyvfio__ld_##T(volatile void *a)                              \
    { T v; __asm__ __volatile__(insn " %" reg "0, [%1]" : "=r"(v) : "r"(a) : "memory"); return v; }
#define PYVFIO_ST(T, insn, reg)                                                   \
    static inline void pyvfio__st_##T(volatile void *a, T v)                      \
    { __asm__ __volatile__(insn " %" reg "0, [%1]" : : "rZ"(v), "r"(a) : "memory"); }
PYVFIO_LD(uint8_t, "ldrb", "w") PYVFIO_LD(uint16_t, "ldrh", "w")
PYVFIO_LD(uint32_t, "ldr", "w") PYVFIO_LD(uint64_t, "ldr", "x")
PYVFIO_ST(uint8_t, "strb", "w") PYVFIO_ST(uint16_t, "strh", "w")
PYVFIO_ST(uint32_t, "str", "w") PYVFIO_ST(uint64_t, "str", "x")
#else
/* One volatile access of the type's width: one instruction on x86-64, ppc64,
 * riscv64 and s390x for naturally aligned addresses. */
#define PYVFIO_LD(T)                                                              \
    static inline T pyvfio__ld_##T(volatile void *a) { return *(volatile T *)a; }
#define PYVFIO_ST(T)                                                              \
    static inline void pyvfio__st_##T(volatile void *a, T v) { *(volatile T *)a = v; }
PYVFIO_LD(uint8_t) PYVFIO_LD(uint16_t) PYVFIO_LD(uint32_t) PYVFIO_LD(uint64_t)
PYVFIO_ST(uint8_t) PYVFIO_ST(uint16_t) PYVFIO_ST(uint32_t) PYVFIO_ST(uint64_t)
#endif

static uint8_t pyvfio_mmio_read8(void *base, size_t off)
{ return pyvfio__ld_uint8_t(PYVFIO_ADDR(base, off)); }
static uint16_t pyvfio_mmio_read16(void *base, size_t off)
{ return pyvfio__ld_uint16_t(PYVFIO_ADDR(base, off)); }
static uint32_t pyvfio_mmio_read32(void *base, size_t off)
{ return pyvfio__ld_uint32_t(PYVFIO_ADDR(base, off)); }
static uint64_t pyvfio_mmio_read64(void *base, size_t off)
{ return pyvfio__ld_uint64_t(PYVFIO_ADDR(base, off)); }
static uint16_t pyvfio_mmio_read16_swap(void *base, size_t off)
{ return __builtin_bswap16(pyvfio__ld_uint16_t(PYVFIO_ADDR(base, off))); }
static uint32_t pyvfio_mmio_read32_swap(void *base, size_t off)
{ return __builtin_bswap32(pyvfio__ld_uint32_t(PYVFIO_ADDR(base, off))); }
static uint64_t pyvfio_mmio_read64_swap(void *base, size_t off)
{ return __builtin_bswap64(pyvfio__ld_uint64_t(PYVFIO_ADDR(base, off))); }
static void pyvfio_mmio_write8(void *base, size_t off, uint8_t value)
{ pyvfio__st_uint8_t(PYVFIO_ADDR(base, off), value); }
static void pyvfio_mmio_write16(void *base, size_t off, uint16_t value)
{ pyvfio__st_uint16_t(PYVFIO_ADDR(base, off), value); }
static void pyvfio_mmio_write32(void *base, size_t off, uint32_t value)
{ pyvfio__st_uint32_t(PYVFIO_ADDR(base, off), value); }
static void pyvfio_mmio_write64(void *base, size_t off, uint64_t value)
{ pyvfio__st_uint64_t(PYVFIO_ADDR(base, off), value); }
static void pyvfio_mmio_write16_swap(void *base, size_t off, uint16_t value)
{ pyvfio__st_uint16_t(PYVFIO_ADDR(base, off), __builtin_bswap16(value)); }
static void pyvfio_mmio_write32_swap(void *base, size_t off, uint32_t value)
{ pyvfio__st_uint32_t(PYVFIO_ADDR(base, off), __builtin_bswap32(value)); }
static void pyvfio_mmio_write64_swap(void *base, size_t off, uint64_t value)
{ pyvfio__st_uint64_t(PYVFIO_ADDR(base, off), __builtin_bswap64(value)); }

/* n/width loads of width bytes each, in address order, into dst (host memory).
 * The bytes land in dst as they sit in the device (no byte swapping).
 * -1 if width is not 1, 2, 4 or 8 or n, off are not multiples of it. */
static int pyvfio_mmio_read_n(void *base, size_t off, void *dst, size_t n, unsigned int width)
{
    unsigned char *out = (unsigned char *)dst;
    size_t i;
    if ((width != 1 && width != 2 && width != 4 && width != 8) || n % width || off % width)
        return -1;
    for (i = 0; i < n; i += width) {
        volatile void *a = PYVFIO_ADDR(base, off + i);
        switch (width) {
        case 1: out[i] = pyvfio__ld_uint8_t(a); break;
        case 2: { uint16_t v = pyvfio__ld_uint16_t(a); memcpy(out + i, &v, 2); break; }
        case 4: { uint32_t v = pyvfio__ld_uint32_t(a); memcpy(out + i, &v, 4); break; }
        default: { uint64_t v = pyvfio__ld_uint64_t(a); memcpy(out + i, &v, 8); break; }
        }
        PYVFIO_IO_ORDER();
    }
    return 0;
}

/* n/width stores of width bytes each, in address order, from src. */
static int pyvfio_mmio_write_n(void *base, size_t off, const void *src, size_t n, unsigned int width)
{
    const unsigned char *in = (const unsigned char *)src;
    size_t i;
    if ((width != 1 && width != 2 && width != 4 && width != 8) || n % width || off % width)
        return -1;
    for (i = 0; i < n; i += width) {
        volatile void *a = PYVFIO_ADDR(base, off + i);
        switch (width) {
        case 1: pyvfio__st_uint8_t(a, in[i]); break;
        case 2: { uint16_t v; memcpy(&v, in + i, 2); pyvfio__st_uint16_t(a, v); break; }
        case 4: { uint32_t v; memcpy(&v, in + i, 4); pyvfio__st_uint32_t(a, v); break; }
        default: { uint64_t v; memcpy(&v, in + i, 8); pyvfio__st_uint64_t(a, v); break; }
        }
        PYVFIO_IO_ORDER();
    }
    return 0;
}

static void pyvfio_mb(void) { PYVFIO_MB(); }
static void pyvfio_rmb(void) { PYVFIO_RMB(); }
static void pyvfio_wmb(void) { PYVFIO_WMB(); }
static void pyvfio_dma_rmb(void) { PYVFIO_DMA_RMB(); }
static void pyvfio_dma_wmb(void) { PYVFIO_DMA_WMB(); }
static const char *pyvfio_barrier_arch(void) { return PYVFIO_BARRIER_ARCH; }

#endif /* PYVFIO_MMIO_ACCESS_H */
