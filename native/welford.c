/*
 * parallelaverage._native: fused one-pass Welford kernels on packed states.
 *
 * A state is one contiguous float64 buffer
 *
 *     [count, W, shift[k], mean[k], m2[k]]
 *
 * where `count` is the number of samples, `W` their total weight, `shift` a
 * per-element reference value (the first sample), `mean` the weighted mean of
 * (x - shift) and `m2` the weighted sum of squared deviations.  Subtracting the
 * shift first keeps the update exact for data far from zero (1e12 + noise):
 * x - shift is exact there (Sterbenz), so the recurrence only ever sees O(noise)
 * numbers.  A complex128 state is the same layout over the interleaved
 * (re, im) doubles: the real and imaginary parts are two independent real
 * accumulators, and E|x - mean|^2 is the sum of their m2 values.
 *
 * The same packed layout is what MPI_Allreduce sends and what snapshots store,
 * so one merge kernel serves both.  The pure-numpy twin of every kernel lives in
 * parallelaverage/_kernels.py and is the oracle in the tests.
 *
 * The module also holds the few atomic operations of the run counter
 * (parallelaverage/_runcounter.py) on int64 slots in memory shared between the
 * processes of a node (an MPI shared-memory window): Python has no atomic
 * read-modify-write on shared memory, and an MPI call would need the MPI
 * library's progress.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* Releasing the GIL costs about 0.1 us: only worth it for large samples. */
#define RELEASE_GIL_MIN_ELEMENTS 16384

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define KERNEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL_CLONES
#endif

/* ---------------------------------------------------------------- kernels */

/* One sample update for an input of C type T; `f` = w / W_new. */
#define DEFINE_ADD(NAME, T)                                                    \
    KERNEL_CLONES static void NAME(const T *restrict x, double *restrict shift, \
                                   double *restrict mean, double *restrict m2, \
                                   Py_ssize_t k, double w, double f)           \
    {                                                                          \
        for (Py_ssize_t i = 0; i < k; i++) {                                   \
            double d = (double)x[i] - shift[i];                                \
            double delta = d - mean[i];                                        \
            double updated = mean[i] + delta * f;                              \
            mean[i] = updated;                                                 \
            m2[i] += w * delta * (d - updated);                                \
        }                                                                      \
    }

/* The first sample becomes the shift (non-finite values shift by 0 so that
 * inf/nan propagate the way numpy's mean does). */
#define DEFINE_INIT(NAME, T)                                                   \
    static void NAME(const T *restrict x, double *restrict shift,              \
                     double *restrict mean, double *restrict m2, Py_ssize_t k) \
    {                                                                          \
        for (Py_ssize_t i = 0; i < k; i++) {                                   \
            double v = (double)x[i];                                           \
            shift[i] = isfinite(v) ? v : 0.0;                                  \
            mean[i] = 0.0;                                                     \
            m2[i] = 0.0;                                                       \
        }                                                                      \
    }

#define FOR_EACH_INPUT_TYPE(X)                                                 \
    X(f64, double)                                                             \
    X(f32, float)                                                              \
    X(i8, int8_t)                                                              \
    X(i16, int16_t)                                                            \
    X(i32, int32_t)                                                            \
    X(i64, int64_t)                                                            \
    X(u8, uint8_t)                                                             \
    X(u16, uint16_t)                                                           \
    X(u32, uint32_t)                                                           \
    X(u64, uint64_t)

#define DEFINE_BOTH(SUFFIX, T) DEFINE_ADD(add_##SUFFIX, T) DEFINE_INIT(init_##SUFFIX, T)
FOR_EACH_INPUT_TYPE(DEFINE_BOTH)

typedef void (*add_fn)(const void *, double *, double *, double *, Py_ssize_t, double, double);
typedef void (*init_fn)(const void *, double *, double *, double *, Py_ssize_t);

typedef struct {
    add_fn add;
    init_fn init;
    int complex_pairs; /* 1 if each buffer item holds two values (re, im) */
} input_kind;

#define KIND(SUFFIX, PAIRS) {(add_fn)add_##SUFFIX, (init_fn)init_##SUFFIX, PAIRS}

/* Map a PEP 3118 format string + itemsize to a kernel; 0 when unsupported. */
static int
select_kind(const char *format, Py_ssize_t itemsize, input_kind *out)
{
    if (format == NULL) {
        return 0;
    }
    if (*format == '@' || *format == '=') {
        format++;
    }
    else if (*format == '<' || *format == '>' || *format == '!') {
        int little = (*format == '<');
#if PY_LITTLE_ENDIAN
        if (!little) return 0;
#else
        if (little) return 0;
#endif
        format++;
    }
    int pairs = 0;
    if (*format == 'Z') {
        pairs = 1;
        format++;
    }
    if (format[0] == '\0' || format[1] != '\0') {
        return 0;
    }
    char c = format[0];
    Py_ssize_t size = pairs ? itemsize / 2 : itemsize;
    if (c == 'd' && size == 8) { *out = (input_kind)KIND(f64, pairs); return 1; }
    if (c == 'f' && size == 4) { *out = (input_kind)KIND(f32, pairs); return 1; }
    if (pairs) {
        return 0;
    }
    int is_signed = (c == 'b' || c == 'h' || c == 'i' || c == 'l' || c == 'q' || c == 'n');
    int is_unsigned = (c == 'B' || c == 'H' || c == 'I' || c == 'L' || c == 'Q' || c == 'N' || c == '?');
    if (!is_signed && !is_unsigned) {
        return 0;
    }
    switch (size) {
    case 1: *out = is_signed ? (input_kind)KIND(i8, 0) : (input_kind)KIND(u8, 0); return 1;
    case 2: *out = is_signed ? (input_kind)KIND(i16, 0) : (input_kind)KIND(u16, 0); return 1;
    case 4: *out = is_signed ? (input_kind)KIND(i32, 0) : (input_kind)KIND(u32, 0); return 1;
    case 8: *out = is_signed ? (input_kind)KIND(i64, 0) : (input_kind)KIND(u64, 0); return 1;
    default: return 0;
    }
}

/* Chan's merge of element i, a as the first operand (its shift is kept), with
 * fb = W_b / W and c = W_a * fb.  (shift_b - shift_a) is exact for nearby
 * shifts; adding the O(noise) mean difference afterwards keeps delta accurate.
 * The three loops below differ only in where the result goes (their restrict
 * pointers need separate loops to vectorize); one expression keeps them equal
 * to the bit. */
#define CHAN_MERGED(i, shift_a, mean_a, m2_a, shift_b, mean_b, m2_b)            \
    double delta = (shift_b[i] - shift_a[i]) + (mean_b[i] - mean_a[i]);       \
    double merged_mean = mean_a[i] + delta * fb;                               \
    double merged_m2 = m2_a[i] + (m2_b[i] + delta * delta * c);

/* a = a (+) b: a's shift stays. */
KERNEL_CLONES static void
merge_arrays(double *restrict shift_a, double *restrict mean_a, double *restrict m2_a,
             const double *restrict shift_b, const double *restrict mean_b,
             const double *restrict m2_b, Py_ssize_t k, double fb, double c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        CHAN_MERGED(i, shift_a, mean_a, m2_a, shift_b, mean_b, m2_b)
        mean_a[i] = merged_mean;
        m2_a[i] = merged_m2;
    }
}

/* b = a (+) b: the merge written into the second operand's place. */
KERNEL_CLONES static void
merge_arrays_into_second(const double *restrict shift_a, const double *restrict mean_a,
                         const double *restrict m2_a, double *restrict shift_b,
                         double *restrict mean_b, double *restrict m2_b, Py_ssize_t k,
                         double fb, double c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        CHAN_MERGED(i, shift_a, mean_a, m2_a, shift_b, mean_b, m2_b)
        shift_b[i] = shift_a[i];
        mean_b[i] = merged_mean;
        m2_b[i] = merged_m2;
    }
}

/* out = a (+) b, a third state. */
KERNEL_CLONES static void
merge_arrays_to(double *restrict shift_o, double *restrict mean_o, double *restrict m2_o,
                const double *restrict shift_a, const double *restrict mean_a,
                const double *restrict m2_a, const double *restrict shift_b,
                const double *restrict mean_b, const double *restrict m2_b,
                Py_ssize_t k, double fb, double c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        CHAN_MERGED(i, shift_a, mean_a, m2_a, shift_b, mean_b, m2_b)
        shift_o[i] = shift_a[i];
        mean_o[i] = merged_mean;
        m2_o[i] = merged_m2;
    }
}

/* ------------------------------------------------------- state buffers */

typedef struct {
    Py_buffer view;
    double *data;
    Py_ssize_t k; /* doubles per section */
} state_view;

static int
get_state(PyObject *obj, state_view *s, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &s->view, flags) < 0) {
        return -1;
    }
    /* float64 arrays, or raw bytes as mpi4py hands them to a reduction op */
    const char *fmt = s->view.format;
    int is_double = fmt != NULL && (strcmp(fmt, "d") == 0 || strcmp(fmt, "<d") == 0 || strcmp(fmt, "=d") == 0);
    int is_bytes = fmt == NULL || strcmp(fmt, "B") == 0 || strcmp(fmt, "b") == 0 || strcmp(fmt, "c") == 0;
    Py_ssize_t n = s->view.len / (Py_ssize_t)sizeof(double);
    if (!(is_double || (is_bytes && s->view.len % (Py_ssize_t)sizeof(double) == 0)) || n < 2 || (n - 2) % 3 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s is not a packed Welford state (float64 [count, W, shift, mean, m2])", name);
        PyBuffer_Release(&s->view);
        return -1;
    }
    s->data = (double *)s->view.buf;
    s->k = (n - 2) / 3;
    return 0;
}

static void
release_states(state_view *views, int n)
{
    for (int i = 0; i < n; i++) {
        PyBuffer_Release(&views[i].view);
    }
}

/* Acquire the packed states args[0..n-1], the first `writable` of them writable,
 * and check they have the same size; on failure nothing stays acquired. */
static int
get_states(PyObject *const *args, int n, int writable, const char *const *names, state_view *views)
{
    for (int i = 0; i < n; i++) {
        if (get_state(args[i], &views[i], i < writable, names[i]) < 0) {
            release_states(views, i);
            return -1;
        }
    }
    for (int i = 1; i < n; i++) {
        if (views[i].k != views[0].k) {
            PyErr_Format(PyExc_ValueError, "states differ in size: %zd and %zd elements", views[0].k, views[i].k);
            release_states(views, n);
            return -1;
        }
    }
    return 0;
}

/* A total order on states deciding which is the first operand of a merge, so
 * that merge(a, b) and merge(b, a) give the same bits: the two partners of an
 * MPI exchange, each merging the other's state into its own, then hold the
 * same result, and so do all ranks at the end of an allreduce.  More samples
 * first, then more weight, then the larger bytes. */
static int
b_goes_first(const double *a, const double *b, Py_ssize_t k)
{
    if (a[0] != b[0]) {
        return b[0] > a[0];
    }
    if (a[1] != b[1]) {
        return b[1] > a[1];
    }
    return memcmp(b + 2, a + 2, (size_t)(3 * k) * sizeof(double)) > 0;
}

/* Whether two packed states of k elements share any memory. */
static int
ranges_overlap(const double *x, const double *y, Py_ssize_t k)
{
    Py_ssize_t n = 2 + 3 * k;
    return x < y + n && y < x + n;
}

/* ------------------------------------------------------------ functions */

PyDoc_STRVAR(add_doc,
"add(state, sample, weight)\n--\n\n"
"Add one sample with a weight >= 0 to a packed float64 state, in place.\n"
"The sample is any C-contiguous buffer of float64, float32, complex128,\n"
"complex64 or integers with as many values as the state has elements,\n"
"or a Python float for a state of one element.\n"
"Raises TypeError for unsupported buffers and ValueError for size mismatch.");

static PyObject *
native_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add(state, sample, weight) takes 3 arguments");
        return NULL;
    }
    double w = PyFloat_AsDouble(args[2]);
    if (w == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(w >= 0.0) || isinf(w)) {
        PyErr_Format(PyExc_ValueError, "weight must be finite and >= 0, got %R", args[2]);
        return NULL;
    }
    state_view s;
    if (get_state(args[0], &s, 1, "state") < 0) {
        return NULL;
    }
    if (PyFloat_CheckExact(args[1]) && s.k == 1) {
        /* a Python float into a scalar state: no buffer to acquire */
        double value = PyFloat_AS_DOUBLE(args[1]);
        double *st = s.data;
        double w_new = st[1] + w;
        if (st[0] == 0.0) {
            init_f64(&value, st + 2, st + 3, st + 4, 1);
        }
        add_f64(&value, st + 2, st + 3, st + 4, 1, w, w_new > 0.0 ? w / w_new : 0.0);
        st[0] += 1.0;
        st[1] = w_new;
        PyBuffer_Release(&s.view);
        Py_RETURN_NONE;
    }
    Py_buffer x;
    if (PyObject_GetBuffer(args[1], &x, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&s.view);
        return NULL;
    }
    input_kind kind;
    if (!select_kind(x.format, x.itemsize, &kind)) {
        PyErr_Format(PyExc_TypeError, "unsupported sample buffer format '%s'",
                     x.format ? x.format : "B");
        goto fail;
    }
    Py_ssize_t values = (x.len / x.itemsize) * (kind.complex_pairs ? 2 : 1);
    if (values != s.k) {
        PyErr_Format(PyExc_ValueError, "sample has %zd values, the state holds %zd", values, s.k);
        goto fail;
    }
    double *st = s.data;
    double *shift = st + 2, *mean = shift + s.k, *m2 = mean + s.k;
    double w_new = st[1] + w;
    double f = w_new > 0.0 ? w / w_new : 0.0;
    int release = s.k >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    if (st[0] == 0.0) {
        kind.init(x.buf, shift, mean, m2, s.k);
    }
    kind.add(x.buf, shift, mean, m2, s.k, w, f);
    if (release) {
        PyEval_RestoreThread(ts);
    }
    st[0] += 1.0;
    st[1] = w_new;
    PyBuffer_Release(&x);
    PyBuffer_Release(&s.view);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&x);
    PyBuffer_Release(&s.view);
    return NULL;
}

PyDoc_STRVAR(merge_doc,
"merge(state_a, state_b)\n--\n\n"
"Chan's merge of packed state b into packed state a, in place (shifts\n"
"included). Either may be empty (count 0). Both must have the same size.\n"
"The result does not depend on the order of the arguments, to the bit.");

static PyObject *
native_merge(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "merge(state_a, state_b) takes 2 arguments");
        return NULL;
    }
    static const char *const names[] = {"state_a", "state_b"};
    state_view views[2];
    if (get_states(args, 2, 1, names, views) < 0) {
        return NULL;
    }
    double *sa = views[0].data;
    const double *sb = views[1].data;
    Py_ssize_t k = views[0].k;
    int release = k >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    if (sb[0] == 0.0) {
        /* merging an empty state changes nothing */
    }
    else if (sa[0] == 0.0) {
        memmove(sa, sb, (size_t)(2 + 3 * k) * sizeof(double));
    }
    else {
        int swap = b_goes_first(sa, sb, k);
        const double *first = swap ? sb : sa, *second = swap ? sa : sb;
        double w1 = first[1], w2 = second[1], w = w1 + w2;
        double f2 = w > 0.0 ? w2 / w : 0.0;
        double c = w > 0.0 ? w1 * f2 : 0.0;
        if (swap) {
            merge_arrays_into_second(sb + 2, sb + 2 + k, sb + 2 + 2 * k, sa + 2, sa + 2 + k, sa + 2 + 2 * k, k, f2, c);
        }
        else {
            merge_arrays(sa + 2, sa + 2 + k, sa + 2 + 2 * k, sb + 2, sb + 2 + k, sb + 2 + 2 * k, k, f2, c);
        }
        sa[0] += sb[0];
        sa[1] = w;
    }
    if (release) {
        PyEval_RestoreThread(ts);
    }
    release_states(views, 2);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(merge_range_doc,
"merge_range(out, a, b, lo, hi, w_a, w_b)\n--\n\n"
"Chan's merge restricted to elements lo..hi-1 of each section of three packed\n"
"states of the same size: out = a (+) b there, given the total weights w_a and\n"
"w_b of the (non-empty) states a and b. `out` may be `a` or `b` itself, or a\n"
"third state. Headers are left alone: the caller knows the merged count and W.\n"
"This is the step of a reduce-scatter, where each rank merges one slice.");

static PyObject *
native_merge_range(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "merge_range(out, a, b, lo, hi, w_a, w_b) takes 7 arguments");
        return NULL;
    }
    Py_ssize_t lo, hi;
    double wa, wb;
    if ((lo = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred()) return NULL;
    if ((hi = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred()) return NULL;
    if ((wa = PyFloat_AsDouble(args[5])) == -1.0 && PyErr_Occurred()) return NULL;
    if ((wb = PyFloat_AsDouble(args[6])) == -1.0 && PyErr_Occurred()) return NULL;
    static const char *const names[] = {"out", "a", "b"};
    state_view views[3];
    if (get_states(args, 3, 1, names, views) < 0) {
        return NULL;
    }
    Py_ssize_t k = views[0].k;
    if (lo < 0 || hi < lo || hi > k) {
        PyErr_Format(PyExc_ValueError, "range %zd..%zd is outside a state of %zd elements", lo, hi, k);
        goto done;
    }
    double *dout = views[0].data;
    const double *da = views[1].data, *db = views[2].data;
    int out_is_a = dout == da, out_is_b = dout == db;
    if ((!out_is_a && ranges_overlap(dout, da, k)) || (!out_is_b && ranges_overlap(dout, db, k)) ||
        ranges_overlap(da, db, k)) {
        PyErr_SetString(PyExc_ValueError, "a and b must not overlap, and out must be a, b, or apart from both");
        goto done;
    }
    double w = wa + wb;
    double fb = w > 0.0 ? wb / w : 0.0;
    double c = w > 0.0 ? wa * fb : 0.0;
    Py_ssize_t n = hi - lo;
    const double *sa = da + 2 + lo, *sb = db + 2 + lo;
    double *so = dout + 2 + lo;
    int release = n >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    if (out_is_a) {
        merge_arrays(so, so + k, so + 2 * k, sb, sb + k, sb + 2 * k, n, fb, c);
    }
    else if (out_is_b) {
        merge_arrays_into_second(sa, sa + k, sa + 2 * k, so, so + k, so + 2 * k, n, fb, c);
    }
    else {
        merge_arrays_to(so, so + k, so + 2 * k, sa, sa + k, sa + 2 * k, sb, sb + k, sb + 2 * k, n, fb, c);
    }
    if (release) {
        PyEval_RestoreThread(ts);
    }
done:
    release_states(views, 3);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------- shared counters */

/* C11 atomics on plain int64 slots of a buffer that other processes map too.
 * Lock-free atomics are address-free (C11 7.17.5), so they work across processes
 * on shared memory; the assertion makes sure no lock hides inside. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && sizeof(long long) == 8,
               "the run counter needs lock-free 64-bit atomics");
typedef _Atomic long long atomic_slot;

typedef struct {
    Py_buffer view;
    atomic_slot *slots;
    Py_ssize_t n;
} slots_view;

/* Acquire `obj` as writable int64 slots, 8-byte aligned, with more than `index` of them. */
static int
get_slots(PyObject *obj, slots_view *s, Py_ssize_t index)
{
    if (PyObject_GetBuffer(obj, &s->view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    s->n = s->view.len / 8;
    if ((uintptr_t)s->view.buf % 8 != 0 || index < 0 || index >= s->n) {
        PyErr_Format(PyExc_ValueError, "slot %zd is outside the %zd aligned int64 slots of the buffer",
                     index, s->n);
        PyBuffer_Release(&s->view);
        return -1;
    }
    s->slots = (atomic_slot *)s->view.buf;
    return 0;
}

static int
get_int64(PyObject *obj, long long *value)
{
    *value = PyLong_AsLongLong(obj);
    return (*value == -1 && PyErr_Occurred()) ? -1 : 0;
}

PyDoc_STRVAR(claim_block_doc,
"claim_block(slots, k)\n--\n\n"
"Claim up to k >= 1 positions from the block [slots[0], slots[1]) of int64\n"
"slots shared between processes: returns (start, stop, end), the positions\n"
"start..stop-1 now belong to the caller alone, end is the block's end; start ==\n"
"stop when the block is exhausted.  Lock-free: a compare-and-swap moves\n"
"slots[0] from start to stop.  Whoever installs a new block stores its start in\n"
"slots[0] before its end in slots[1], and blocks only ever move forward, so a\n"
"claim read against a newer end still lies inside the block it was made from.");

static PyObject *
native_claim_block(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long long k;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "claim_block(slots, k) takes 2 arguments");
        return NULL;
    }
    if (get_int64(args[1], &k) < 0) {
        return NULL;
    }
    if (k < 1) {
        PyErr_Format(PyExc_ValueError, "k=%lld: must be at least 1", k);
        return NULL;
    }
    slots_view s;
    if (get_slots(args[0], &s, 1) < 0) {
        return NULL;
    }
    long long start = atomic_load(&s.slots[0]), end, stop;
    for (;;) {
        end = atomic_load(&s.slots[1]);
        if (start >= end) {
            stop = start;
            break;
        }
        stop = end - start > k ? start + k : end;
        /* on failure, start is reloaded with the current value of slots[0] */
        if (atomic_compare_exchange_weak(&s.slots[0], &start, stop)) {
            break;
        }
    }
    PyBuffer_Release(&s.view);
    return Py_BuildValue("(LLL)", start, stop, end);
}

PyDoc_STRVAR(atomic_load_doc,
"atomic_load(slots, index)\n--\n\n"
"The int64 slots[index] of a shared buffer, read atomically.");

static PyObject *
native_atomic_load(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "atomic_load(slots, index) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    slots_view s;
    if (get_slots(args[0], &s, index) < 0) {
        return NULL;
    }
    long long value = atomic_load(&s.slots[index]);
    PyBuffer_Release(&s.view);
    return PyLong_FromLongLong(value);
}

PyDoc_STRVAR(atomic_store_doc,
"atomic_store(slots, index, value)\n--\n\n"
"Set the int64 slots[index] of a shared buffer atomically (sequentially consistent).");

static PyObject *
native_atomic_store(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long long value;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "atomic_store(slots, index, value) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if ((index == -1 && PyErr_Occurred()) || get_int64(args[2], &value) < 0) {
        return NULL;
    }
    slots_view s;
    if (get_slots(args[0], &s, index) < 0) {
        return NULL;
    }
    atomic_store(&s.slots[index], value);
    PyBuffer_Release(&s.view);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(atomic_fetch_add_doc,
"atomic_fetch_add(slots, index, increment)\n--\n\n"
"Add increment to the int64 slots[index] of a shared buffer atomically; return\n"
"the value before.");

static PyObject *
native_atomic_fetch_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long long increment;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "atomic_fetch_add(slots, index, increment) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if ((index == -1 && PyErr_Occurred()) || get_int64(args[2], &increment) < 0) {
        return NULL;
    }
    slots_view s;
    if (get_slots(args[0], &s, index) < 0) {
        return NULL;
    }
    long long before = atomic_fetch_add(&s.slots[index], increment);
    PyBuffer_Release(&s.view);
    return PyLong_FromLongLong(before);
}

PyDoc_STRVAR(atomic_compare_exchange_doc,
"atomic_compare_exchange(slots, index, expected, desired)\n--\n\n"
"Set the int64 slots[index] of a shared buffer to desired if it holds expected,\n"
"atomically; return whether it did.");

static PyObject *
native_atomic_compare_exchange(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    long long expected, desired;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "atomic_compare_exchange(slots, index, expected, desired) takes 4 arguments");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if ((index == -1 && PyErr_Occurred()) || get_int64(args[2], &expected) < 0 || get_int64(args[3], &desired) < 0) {
        return NULL;
    }
    slots_view s;
    if (get_slots(args[0], &s, index) < 0) {
        return NULL;
    }
    int swapped = atomic_compare_exchange_strong(&s.slots[index], &expected, desired);
    PyBuffer_Release(&s.view);
    return PyBool_FromLong(swapped);
}

static PyMethodDef native_methods[] = {
    {"add", (PyCFunction)(void (*)(void))native_add, METH_FASTCALL, add_doc},
    {"merge", (PyCFunction)(void (*)(void))native_merge, METH_FASTCALL, merge_doc},
    {"merge_range", (PyCFunction)(void (*)(void))native_merge_range, METH_FASTCALL, merge_range_doc},
    {"claim_block", (PyCFunction)(void (*)(void))native_claim_block, METH_FASTCALL, claim_block_doc},
    {"atomic_load", (PyCFunction)(void (*)(void))native_atomic_load, METH_FASTCALL, atomic_load_doc},
    {"atomic_store", (PyCFunction)(void (*)(void))native_atomic_store, METH_FASTCALL, atomic_store_doc},
    {"atomic_fetch_add", (PyCFunction)(void (*)(void))native_atomic_fetch_add, METH_FASTCALL, atomic_fetch_add_doc},
    {"atomic_compare_exchange", (PyCFunction)(void (*)(void))native_atomic_compare_exchange, METH_FASTCALL,
     atomic_compare_exchange_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "parallelaverage._native",
    .m_doc = "Fused one-pass Welford kernels on packed float64 states; atomics on shared int64 slots.",
    .m_size = 0,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
