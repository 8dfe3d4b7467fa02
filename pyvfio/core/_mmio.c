/* pyvfio.core._mmio: the single-access MMIO accessors of mmio_access.h as
 * CPython functions.
 *
 * The cffi binding offers the same accessors, but a cffi call releases and
 * retakes the GIL around every C call, which costs more than the access
 * itself; these functions hold the GIL (an access does not block) and take
 * their arguments with METH_FASTCALL.  Addresses are plain integers: the
 * caller (pyvfio.core.mmio) has checked bounds and alignment.
 *
 *   read32(addr) -> int            one 32-bit load at addr
 *   write32(addr, value)           one 32-bit store at addr
 *   read32_swap / write32_swap     the same, byte-swapped (a big-endian device)
 *   and likewise for 8, 16 and 64 bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "mmio_access.h"

static int pyvfio_addr(PyObject *obj, void **addr)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(obj);
    if (a == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *addr = (void *)(uintptr_t)a;
    return 0;
}

static int pyvfio_value(PyObject *obj, unsigned long long max, unsigned long long *value)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > max) {
        PyErr_Format(PyExc_OverflowError, "%llu does not fit the access width", v);
        return -1;
    }
    *value = v;
    return 0;
}

#define PYVFIO_READ(NAME, CALL)                                                         \
    static PyObject *py_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs) \
    {                                                                                   \
        void *addr;                                                                     \
        (void)self;                                                                     \
        if (nargs != 1) {                                                               \
            PyErr_SetString(PyExc_TypeError, #NAME "(addr) takes one argument");       \
            return NULL;                                                                \
        }                                                                               \
        if (pyvfio_addr(args[0], &addr))                                                \
            return NULL;                                                                \
        return PyLong_FromUnsignedLongLong(CALL(addr, 0));                              \
    }

#define PYVFIO_WRITE(NAME, CALL, T)                                                     \
    static PyObject *py_##NAME(PyObject *self, PyObject *const *args, Py_ssize_t nargs) \
    {                                                                                   \
        void *addr;                                                                     \
        unsigned long long v;                                                           \
        (void)self;                                                                     \
        if (nargs != 2) {                                                               \
            PyErr_SetString(PyExc_TypeError, #NAME "(addr, value) takes two arguments");\
            return NULL;                                                                \
        }                                                                               \
        if (pyvfio_addr(args[0], &addr) || pyvfio_value(args[1], (T)-1, &v))           \
            return NULL;                                                                \
        CALL(addr, 0, (T)v);                                                            \
        Py_RETURN_NONE;                                                                 \
    }

PYVFIO_READ(read8, pyvfio_mmio_read8)
PYVFIO_READ(read16, pyvfio_mmio_read16)
PYVFIO_READ(read32, pyvfio_mmio_read32)
PYVFIO_READ(read64, pyvfio_mmio_read64)
PYVFIO_READ(read16_swap, pyvfio_mmio_read16_swap)
PYVFIO_READ(read32_swap, pyvfio_mmio_read32_swap)
PYVFIO_READ(read64_swap, pyvfio_mmio_read64_swap)
PYVFIO_WRITE(write8, pyvfio_mmio_write8, uint8_t)
PYVFIO_WRITE(write16, pyvfio_mmio_write16, uint16_t)
PYVFIO_WRITE(write32, pyvfio_mmio_write32, uint32_t)
PYVFIO_WRITE(write64, pyvfio_mmio_write64, uint64_t)
PYVFIO_WRITE(write16_swap, pyvfio_mmio_write16_swap, uint16_t)
PYVFIO_WRITE(write32_swap, pyvfio_mmio_write32_swap, uint32_t)
PYVFIO_WRITE(write64_swap, pyvfio_mmio_write64_swap, uint64_t)

#define PYVFIO_DEF(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))py_##NAME, METH_FASTCALL, DOC}

static PyMethodDef pyvfio_mmio_methods[] = {
    PYVFIO_DEF(read8, "read8(addr): one 8-bit load"),
    PYVFIO_DEF(read16, "read16(addr): one 16-bit load"),
    PYVFIO_DEF(read32, "read32(addr): one 32-bit load"),
    PYVFIO_DEF(read64, "read64(addr): one 64-bit load"),
    PYVFIO_DEF(read16_swap, "read16_swap(addr): one 16-bit load, byte-swapped"),
    PYVFIO_DEF(read32_swap, "read32_swap(addr): one 32-bit load, byte-swapped"),
    PYVFIO_DEF(read64_swap, "read64_swap(addr): one 64-bit load, byte-swapped"),
    PYVFIO_DEF(write8, "write8(addr, value): one 8-bit store"),
    PYVFIO_DEF(write16, "write16(addr, value): one 16-bit store"),
    PYVFIO_DEF(write32, "write32(addr, value): one 32-bit store"),
    PYVFIO_DEF(write64, "write64(addr, value): one 64-bit store"),
    PYVFIO_DEF(write16_swap, "write16_swap(addr, value): one 16-bit store, byte-swapped"),
    PYVFIO_DEF(write32_swap, "write32_swap(addr, value): one 32-bit store, byte-swapped"),
    PYVFIO_DEF(write64_swap, "write64_swap(addr, value): one 64-bit store, byte-swapped"),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pyvfio_mmio_module = {
    PyModuleDef_HEAD_INIT, "pyvfio.core._mmio",
    "Single-access MMIO loads and stores (see mmio_access.h).", -1, pyvfio_mmio_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mmio(void)
{
    return PyModule_Create(&pyvfio_mmio_module);
}
