/* C helpers for the Cython local core: a monotonic clock and code-point key order. */
#ifndef MEMKV_CORE_C_H
#define MEMKV_CORE_C_H

#include <Python.h>
#include <string.h>

#if defined(_WIN32)
#include <windows.h>
static double memkv_monotonic(void)
{
    LARGE_INTEGER frequency, counter;
    QueryPerformanceFrequency(&frequency);
    QueryPerformanceCounter(&counter);
    return (double)counter.QuadPart / (double)frequency.QuadPart;
}
#else
#include <time.h>
/* The default clock, read without a Python call (time.monotonic reads the same clock). */
static double memkv_monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}
#endif

/* CLOCK_MONOTONIC as of the last timer tick: a few ns to read instead of tens, and
 * never ahead of memkv_monotonic(). Where there is none, -inf makes callers read the
 * precise clock. */
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
static double memkv_monotonic_coarse(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}
#else
static double memkv_monotonic_coarse(void)
{
    return -Py_HUGE_VAL;
}
#endif

/* Order two exact, ready str objects by code point, like Python's `<` on str.
 * Latin-1 keys (the common case) compare with one memcmp; other kinds defer to
 * PyUnicode_Compare, which cannot fail or run Python code for exact str. */
static inline int memkv_key_cmp(PyObject *a, PyObject *b)
{
    Py_ssize_t la, lb;
    int r;
    if (a == b)
        return 0;
    if (PyUnicode_KIND(a) == PyUnicode_1BYTE_KIND && PyUnicode_KIND(b) == PyUnicode_1BYTE_KIND) {
        la = PyUnicode_GET_LENGTH(a);
        lb = PyUnicode_GET_LENGTH(b);
        r = memcmp(PyUnicode_1BYTE_DATA(a), PyUnicode_1BYTE_DATA(b), (size_t)(la < lb ? la : lb));
        if (r)
            return r;
        return (la > lb) - (la < lb);
    }
    return PyUnicode_Compare(a, b);
}

/* str.startswith for exact, ready str objects; never runs Python code. */
static inline int memkv_startswith(PyObject *s, PyObject *prefix)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(prefix), i;
    int ks, kp;
    const void *ds, *dp;
    if (n == 0)
        return 1;
    if (PyUnicode_GET_LENGTH(s) < n)
        return 0;
    ks = PyUnicode_KIND(s);
    kp = PyUnicode_KIND(prefix);
    ds = PyUnicode_DATA(s);
    dp = PyUnicode_DATA(prefix);
    if (ks == kp)
        return memcmp(ds, dp, (size_t)n * (size_t)ks) == 0;
    /* A str uses the narrowest kind that holds its code points, so a wider prefix
     * holds one that `s` cannot. */
    if (kp > ks)
        return 0;
    for (i = 0; i < n; i++) {
        if (PyUnicode_READ(ks, ds, i) != PyUnicode_READ(kp, dp, i))
            return 0;
    }
    return 1;
}

/* Whether the cyclic GC must see an object that holds `o` (CPython's own rule for
 * untracking dicts and tuples: only containers can close a reference cycle). */
static inline int memkv_may_be_tracked(PyObject *o)
{
    if (!PyObject_IS_GC(o))
        return 0;
    if (PyTuple_CheckExact(o))
        return PyObject_GC_IsTracked(o);
    return 1;
}

/* Ready a str created through the legacy API (a no-op on 3.12+ and for str from Python). */
static inline int memkv_ready(PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    return PyUnicode_READY(s);
#else
    (void)s;
    return 0;
#endif
}

#endif
