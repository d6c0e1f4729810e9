/*
 * parallelaverage._native_moments: the element loops of the Moments and
 * Covariance accumulators (parallelaverage/_moments.py) on packed states.
 *
 * A state is one contiguous float64 buffer: the header of a Welford state
 * (parallelaverage/_packed.py: count, npos, the weight sums W, S, P with
 * unlimited exponents, flags, tag), then the element sections:
 *
 *     Moments of order p (tag 10 + p):  shift[k], mean[k], u2[k], u3[k], u4[k]
 *                                       (u3, u4 only for p >= 3, 4)
 *     Covariance (tag 20):              shift[d], mean[d], C[d (d + 1) / 2]
 *                                       (the upper triangle, row by row)
 *
 * Every section holds a central moment "Kish-normalised" like Welford's u:
 * u_p = M_p W / P with M_p = sum w (x - mean)^p, so u2 is the unbiased
 * weighted variance itself and C the unbiased weighted covariance; none of
 * them overflows or underflows with the weights (5e-324 .. 1e300).
 *
 * The header arithmetic is not here: Python computes it with _packed (the
 * same functions that are the reference of native/welford.c) and passes the
 * coefficients, all in [0, 1] or small multiples of such, as a tuple. These
 * loops are what grows with the data. The pure-numpy twins of every loop are
 * in parallelaverage/_momentkernels.py and give the same bits: the same IEEE
 * operations in the same order (-std=c11 turns contraction into FMA off).
 *
 * Add, one sample x of weight w (delta = x - shift - mean, before the add;
 * f = w/W', g = W/W', a = P W'/(W P'), sb^2 = w W/P' from the header):
 *     mean' = mean + f delta
 *     u2'   = a u2 + (sb delta)^2
 *     u3'   = a u3 + (sb delta)^2 (g - f) delta - 3 a f delta u2
 *     u4'   = a u4 + (sb delta)^2 (g^2 - g f + f^2) delta^2 - 4 a f delta u3
 *             + 6 a f^2 delta^2 u2
 *     C'_ij = a C_ij + (sb delta_i)(sb delta_j)
 * Merge, A (which keeps its shift) and B (f_A = W_A/W, c_A = P_A W/(W_A P),
 * scd^2 = W_A W_B / P; delta = mean_B - mean_A):
 *     u2 = c_A A2 + c_B B2 + (scd delta)^2
 *     u3 = c_A A3 + c_B B3 + (scd delta)^2 (f_A - f_B) delta
 *          + 3 delta (c_B f_A B2 - c_A f_B A2)
 *     u4 = c_A A4 + c_B B4 + (scd delta)^2 (f_A^2 - f_A f_B + f_B^2) delta^2
 *          + 6 delta^2 (c_B f_A^2 B2 + c_A f_B^2 A2) + 4 delta (c_B f_A B3 - c_A f_B A3)
 *     C_ij = c_A A_ij + c_B B_ij + (scd delta_i)(scd delta_j)
 * (Pebay 2008, SAND2008-6212, with weights, divided by P/W.)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define HEADER 10
#define TAG 9
#define MOMENTS_TAG_BASE 10.0
#define COVARIANCE_TAG 20.0
#define RELEASE_GIL_MIN_VALUES 16384

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define KERNEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KERNEL_CLONES
#endif

/* ------------------------------------------------------------ coefficients */

typedef struct {
    double f, a, sb, gmf, af3, h, af4, af6;
} moments_add_coef;

typedef struct {
    double f1, f2, c1, c2, scd, fmf, k2a, k2b, h, q2a, q2b;
} moments_merge_coef;

typedef struct {
    double f, a, sb;
} covariance_add_coef;

typedef struct {
    double f1, f2, c1, c2, scd;
} covariance_merge_coef;

/* n floats from a tuple into out; a TypeError naming the kernel otherwise */
static int
read_coefficients(PyObject *tuple, double *out, Py_ssize_t n, const char *kernel)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != n) {
        PyErr_Format(PyExc_TypeError, "%s: coefficients must be a tuple of %zd floats", kernel, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(tuple, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- buffers */

static int
get_f64(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        return -1;
    }
    const char *fmt = view->format;
    if (fmt == NULL || !(strcmp(fmt, "d") == 0 || strcmp(fmt, "<d") == 0 || strcmp(fmt, "=d") == 0)) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float64 buffer", name);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The order (2, 3, 4) of a packed Moments state, with k its elements; -1 and a
 * ValueError if the buffer is not one. */
static int
moments_layout(const Py_buffer *view, const char *name, Py_ssize_t *k)
{
    Py_ssize_t n = view->len / (Py_ssize_t)sizeof(double);
    double tag = n > HEADER ? ((const double *)view->buf)[TAG] : 0.0;
    int order = (int)(tag - MOMENTS_TAG_BASE);
    if (n <= HEADER || !(order >= 2 && order <= 4 && tag == MOMENTS_TAG_BASE + order) ||
        (n - HEADER) % (order + 1) != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not a packed Moments state (see parallelaverage/_moments.py)", name);
        return -1;
    }
    *k = (n - HEADER) / (order + 1);
    return order;
}

/* d of a packed Covariance state (HEADER + 2 d + d (d + 1) / 2 values); -1 and
 * a ValueError if the buffer is not one. */
static Py_ssize_t
covariance_dimension(const Py_buffer *view, const char *name)
{
    Py_ssize_t n = view->len / (Py_ssize_t)sizeof(double);
    if (n > HEADER && ((const double *)view->buf)[TAG] == COVARIANCE_TAG) {
        Py_ssize_t m = n - HEADER; /* d^2 + 5 d = 2 m */
        Py_ssize_t d = (Py_ssize_t)((sqrt(25.0 + 8.0 * (double)m) - 5.0) / 2.0);
        for (Py_ssize_t guess = d > 0 ? d - 1 : 0; guess <= d + 1; guess++) {
            if (guess * guess + 5 * guess == 2 * m) {
                return guess;
            }
        }
    }
    PyErr_Format(PyExc_ValueError, "%s is not a packed Covariance state (see parallelaverage/_moments.py)", name);
    return -1;
}

/* --------------------------------------------------------- moments: add */

/* One sample into shift, mean, u2 (u3, u4): ORDER and RECENTRE are constants. */
#define DEFINE_MOMENTS_ADD(NAME, ORDER, RECENTRE)                                                  \
    KERNEL_CLONES static void NAME(const double *restrict x, double *restrict shift,               \
                                   double *restrict mean, double *restrict u2, double *restrict u3, \
                                   double *restrict u4, Py_ssize_t k, moments_add_coef c)          \
    {                                                                                              \
        for (Py_ssize_t i = 0; i < k; i++) {                                                       \
            double d = x[i] - shift[i];                                                            \
            double delta = d - mean[i];                                                            \
            double m = mean[i] + c.f * delta;                                                      \
            double t = c.sb * delta;                                                               \
            double t2 = t * t;                                                                     \
            if (ORDER >= 4) {                                                                      \
                double dd = delta * delta;                                                         \
                u4[i] = ((c.a * u4[i] + (t2 * c.h) * dd) - (c.af4 * delta) * u3[i]) + (c.af6 * dd) * u2[i]; \
            }                                                                                      \
            if (ORDER >= 3) {                                                                      \
                u3[i] = (c.a * u3[i] + (t2 * c.gmf) * delta) - (c.af3 * delta) * u2[i];            \
            }                                                                                      \
            u2[i] = c.a * u2[i] + t2;                                                              \
            if (RECENTRE && isfinite(m)) { /* the shift moves to the mean, exactly (TwoSum) */     \
                double s0 = shift[i];                                                              \
                double s = s0 + m;                                                                 \
                double bb = s - s0;                                                                \
                m = (s0 - (s - bb)) + (m - bb);                                                    \
                shift[i] = s;                                                                      \
            }                                                                                      \
            mean[i] = m;                                                                           \
        }                                                                                          \
    }

DEFINE_MOMENTS_ADD(moments_add_2_0, 2, 0)
DEFINE_MOMENTS_ADD(moments_add_2_1, 2, 1)
DEFINE_MOMENTS_ADD(moments_add_3_0, 3, 0)
DEFINE_MOMENTS_ADD(moments_add_3_1, 3, 1)
DEFINE_MOMENTS_ADD(moments_add_4_0, 4, 0)
DEFINE_MOMENTS_ADD(moments_add_4_1, 4, 1)

typedef void (*moments_add_fn)(const double *, double *, double *, double *, double *, double *, Py_ssize_t,
                               moments_add_coef);
static const moments_add_fn moments_add_loops[3][2] = {
    {moments_add_2_0, moments_add_2_1}, {moments_add_3_0, moments_add_3_1}, {moments_add_4_0, moments_add_4_1}};

PyDoc_STRVAR(moments_add_doc,
"moments_add(state, x, coefficients, recentre)\n--\n\n"
"Add one sample (a float64 buffer of k values) to a packed Moments state in\n"
"place, given the coefficients (f, a, sb, g - f, 3 a f, g^2 - g f + f^2,\n"
"4 a f, 6 a f^2) that the header update computed; recentre: also move the\n"
"shifts to the means. The header is left alone.");

static PyObject *
native_moments_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "moments_add(state, x, coefficients, recentre) takes 4 arguments");
        return NULL;
    }
    moments_add_coef c;
    if (read_coefficients(args[2], (double *)&c, 8, "moments_add") < 0) return NULL;
    int recentre = PyObject_IsTrue(args[3]);
    if (recentre < 0) return NULL;
    Py_buffer state, x;
    if (get_f64(args[0], &state, 1, "state") < 0) return NULL;
    if (get_f64(args[1], &x, 0, "x") < 0) {
        PyBuffer_Release(&state);
        return NULL;
    }
    Py_ssize_t k;
    int order = moments_layout(&state, "state", &k);
    if (order > 0 && x.len / (Py_ssize_t)sizeof(double) != k) {
        PyErr_Format(PyExc_ValueError, "x has %zd values, the state holds %zd", x.len / (Py_ssize_t)sizeof(double), k);
        order = -1;
    }
    if (order > 0) {
        double *s = (double *)state.buf + HEADER;
        int release = k * (order + 1) >= RELEASE_GIL_MIN_VALUES;
        PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
        moments_add_loops[order - 2][recentre != 0](x.buf, s, s + k, s + 2 * k, order >= 3 ? s + 3 * k : NULL,
                                                    order >= 4 ? s + 4 * k : NULL, k, c);
        if (release) PyEval_RestoreThread(ts);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&state);
    if (order < 0) return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------- moments: merge */

#define MOMENTS_MERGE_ELEMENT(ORDER)                                                               \
    double ds = s2[i] - s1[i];                                                                     \
    double delta = ds + (m2[i] - m1[i]);                                                           \
    double m = c.f1 * m1[i] + c.f2 * (ds + m2[i]);                                                 \
    double t = c.scd * delta;                                                                      \
    double t2 = t * t;                                                                             \
    double r4 = 0.0, r3 = 0.0;                                                                     \
    if (ORDER >= 4) {                                                                              \
        double dd = delta * delta;                                                                 \
        r4 = (((c.c1 * a4[i] + c.c2 * b4[i]) + (t2 * c.h) * dd) + (6.0 * dd) * (c.q2b * b2[i] + c.q2a * a2[i])) \
             + (4.0 * delta) * (c.k2b * b3[i] - c.k2a * a3[i]);                                     \
    }                                                                                              \
    if (ORDER >= 3) {                                                                              \
        r3 = ((c.c1 * a3[i] + c.c2 * b3[i]) + (t2 * c.fmf) * delta) + (3.0 * delta) * (c.k2b * b2[i] - c.k2a * a2[i]); \
    }                                                                                              \
    double r2 = (c.c1 * a2[i] + c.c2 * b2[i]) + t2;

/* out = first (+) second where out is the first (INTO_FIRST) or the second
 * operand: every value of element i is read before element i is written; the
 * two aliasing cases are separate functions, as restrict needs. */
#define DEFINE_MOMENTS_MERGE_LOOP(NAME, ORDER, INTO_FIRST)                                         \
    KERNEL_CLONES static void NAME(double *restrict out, const double *restrict other, Py_ssize_t k, \
                                   moments_merge_coef c)                                           \
    {                                                                                              \
        const double *s1 = INTO_FIRST ? out : other, *m1 = s1 + k, *a2 = s1 + 2 * k;               \
        const double *a3 = s1 + 3 * k, *a4 = s1 + 4 * k;                                           \
        const double *s2 = INTO_FIRST ? other : out, *m2 = s2 + k, *b2 = s2 + 2 * k;               \
        const double *b3 = s2 + 3 * k, *b4 = s2 + 4 * k;                                           \
        for (Py_ssize_t i = 0; i < k; i++) {                                                       \
            MOMENTS_MERGE_ELEMENT(ORDER)                                                           \
            out[i] = s1[i];                                                                        \
            out[k + i] = m;                                                                        \
            out[2 * k + i] = r2;                                                                   \
            if (ORDER >= 3) out[3 * k + i] = r3;                                                   \
            if (ORDER >= 4) out[4 * k + i] = r4;                                                   \
        }                                                                                          \
    }

DEFINE_MOMENTS_MERGE_LOOP(moments_merge_2_second, 2, 0)
DEFINE_MOMENTS_MERGE_LOOP(moments_merge_2_first, 2, 1)
DEFINE_MOMENTS_MERGE_LOOP(moments_merge_3_second, 3, 0)
DEFINE_MOMENTS_MERGE_LOOP(moments_merge_3_first, 3, 1)
DEFINE_MOMENTS_MERGE_LOOP(moments_merge_4_second, 4, 0)
DEFINE_MOMENTS_MERGE_LOOP(moments_merge_4_first, 4, 1)

typedef void (*moments_merge_fn)(double *, const double *, Py_ssize_t, moments_merge_coef);
static const moments_merge_fn moments_merge_loops[3][2] = {
    {moments_merge_2_second, moments_merge_2_first},
    {moments_merge_3_second, moments_merge_3_first},
    {moments_merge_4_second, moments_merge_4_first}};

PyDoc_STRVAR(moments_merge_doc,
"moments_merge(out, first, second, coefficients)\n--\n\n"
"The elements of first (+) second (the first operand keeps its shift) written\n"
"to out, which must be first or second itself; coefficients (f1, f2, c1, c2,\n"
"scd, f1 - f2, c1 f2, c2 f1, f1^2 - f1 f2 + f2^2, c1 f2^2, c2 f1^2) from the\n"
"headers. The header of out is left alone.");

/* out must be one of first, second: returns 1 for first, 0 for second, -1 (error) else */
static int
which_operand(const Py_buffer *out, const Py_buffer *first, const Py_buffer *second)
{
    if (out->buf == first->buf && out->buf != second->buf) return 1;
    if (out->buf == second->buf && out->buf != first->buf) return 0;
    PyErr_SetString(PyExc_ValueError, "out must be the first or the second operand (and they must differ)");
    return -1;
}

static int
get_three(PyObject *const *args, Py_buffer *views)
{
    static const char *const names[] = {"out", "first", "second"};
    for (int i = 0; i < 3; i++) {
        if (get_f64(args[i], &views[i], i == 0, names[i]) < 0) {
            for (int j = 0; j < i; j++) PyBuffer_Release(&views[j]);
            return -1;
        }
    }
    if (views[1].len != views[0].len || views[2].len != views[0].len) {
        PyErr_SetString(PyExc_ValueError, "the states differ in size");
        for (int j = 0; j < 3; j++) PyBuffer_Release(&views[j]);
        return -1;
    }
    return 0;
}

static PyObject *
native_moments_merge(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "moments_merge(out, first, second, coefficients) takes 4 arguments");
        return NULL;
    }
    moments_merge_coef c;
    if (read_coefficients(args[3], (double *)&c, 11, "moments_merge") < 0) return NULL;
    Py_buffer views[3];
    if (get_three(args, views) < 0) return NULL;
    Py_ssize_t k;
    int order = moments_layout(&views[0], "out", &k);
    int into_first = order > 0 ? which_operand(&views[0], &views[1], &views[2]) : -1;
    if (into_first >= 0) {
        const Py_buffer *other = into_first ? &views[2] : &views[1];
        int release = k * (order + 1) >= RELEASE_GIL_MIN_VALUES;
        PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
        moments_merge_loops[order - 2][into_first]((double *)views[0].buf + HEADER,
                                                   (const double *)other->buf + HEADER, k, c);
        if (release) PyEval_RestoreThread(ts);
    }
    for (int j = 0; j < 3; j++) PyBuffer_Release(&views[j]);
    if (into_first < 0) return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ covariance */

/* C_ij = a C_ij + t_i t_j over the upper triangle, row by row */
KERNEL_CLONES static void
triangle_update(double *restrict cov, const double *restrict t, Py_ssize_t d, double a)
{
    for (Py_ssize_t i = 0; i < d; i++) {
        const double ti = t[i];
        double *restrict row = cov;
        const double *restrict tail = t + i;
        Py_ssize_t n = d - i;
        for (Py_ssize_t j = 0; j < n; j++) {
            row[j] = a * row[j] + ti * tail[j];
        }
        cov += n;
    }
}

/* C_ij = (c1 A_ij + c2 B_ij) + t_i t_j into out, which is A or B */
#define DEFINE_TRIANGLE_MERGE(NAME, INTO_FIRST)                                                    \
    KERNEL_CLONES static void NAME(double *restrict out, const double *restrict other,             \
                                   const double *restrict t, Py_ssize_t d, double c1, double c2)   \
    {                                                                                              \
        for (Py_ssize_t i = 0; i < d; i++) {                                                       \
            const double ti = t[i];                                                                \
            const double *restrict tail = t + i;                                                   \
            Py_ssize_t n = d - i;                                                                  \
            for (Py_ssize_t j = 0; j < n; j++) {                                                   \
                double first = INTO_FIRST ? out[j] : other[j];                                     \
                double second = INTO_FIRST ? other[j] : out[j];                                    \
                out[j] = (c1 * first + c2 * second) + ti * tail[j];                                \
            }                                                                                      \
            out += n;                                                                              \
            other += n;                                                                            \
        }                                                                                          \
    }
DEFINE_TRIANGLE_MERGE(triangle_merge_second, 0)
DEFINE_TRIANGLE_MERGE(triangle_merge_first, 1)

/* A scratch vector of d doubles: on the stack when small. */
#define SMALL_D 256

PyDoc_STRVAR(covariance_add_doc,
"covariance_add(state, x, coefficients, recentre)\n--\n\n"
"Add one sample (a float64 buffer of d values) to a packed Covariance state\n"
"in place, given the coefficients (f, a, sb) from the header update; recentre:\n"
"also move the shifts to the means. The header is left alone.");

static PyObject *
native_covariance_add(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "covariance_add(state, x, coefficients, recentre) takes 4 arguments");
        return NULL;
    }
    covariance_add_coef c;
    if (read_coefficients(args[2], (double *)&c, 3, "covariance_add") < 0) return NULL;
    int recentre = PyObject_IsTrue(args[3]);
    if (recentre < 0) return NULL;
    Py_buffer state, xv;
    if (get_f64(args[0], &state, 1, "state") < 0) return NULL;
    if (get_f64(args[1], &xv, 0, "x") < 0) {
        PyBuffer_Release(&state);
        return NULL;
    }
    Py_ssize_t d = covariance_dimension(&state, "state");
    if (d >= 0 && xv.len / (Py_ssize_t)sizeof(double) != d) {
        PyErr_Format(PyExc_ValueError, "x has %zd values, the state holds %zd", xv.len / (Py_ssize_t)sizeof(double), d);
        d = -1;
    }
    double small[SMALL_D];
    double *t = d > SMALL_D ? PyMem_RawMalloc((size_t)d * sizeof(double)) : small;
    if (d >= 0 && t == NULL) {
        PyErr_NoMemory();
        d = -1;
    }
    if (d >= 0) {
        const double *x = xv.buf;
        double *shift = (double *)state.buf + HEADER, *mean = shift + d, *cov = shift + 2 * d;
        int release = d * (d + 1) / 2 >= RELEASE_GIL_MIN_VALUES;
        PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
        for (Py_ssize_t i = 0; i < d; i++) {
            double delta = (x[i] - shift[i]) - mean[i];
            double m = mean[i] + c.f * delta;
            t[i] = c.sb * delta;
            if (recentre && isfinite(m)) {
                double s0 = shift[i];
                double s = s0 + m;
                double bb = s - s0;
                m = (s0 - (s - bb)) + (m - bb);
                shift[i] = s;
            }
            mean[i] = m;
        }
        triangle_update(cov, t, d, c.a);
        if (release) PyEval_RestoreThread(ts);
    }
    if (t != small && t != NULL) PyMem_RawFree(t);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&state);
    if (d < 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(covariance_merge_doc,
"covariance_merge(out, first, second, coefficients)\n--\n\n"
"The elements of first (+) second (the first operand keeps its shift) written\n"
"to out, which must be first or second itself; coefficients (f1, f2, c1, c2,\n"
"scd) from the headers. The header of out is left alone.");

static PyObject *
native_covariance_merge(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "covariance_merge(out, first, second, coefficients) takes 4 arguments");
        return NULL;
    }
    covariance_merge_coef c;
    if (read_coefficients(args[3], (double *)&c, 5, "covariance_merge") < 0) return NULL;
    Py_buffer views[3];
    if (get_three(args, views) < 0) return NULL;
    Py_ssize_t d = covariance_dimension(&views[0], "out");
    int into_first = d >= 0 ? which_operand(&views[0], &views[1], &views[2]) : -1;
    double small[SMALL_D];
    double *t = d > SMALL_D ? PyMem_RawMalloc((size_t)d * sizeof(double)) : small;
    if (into_first >= 0 && t == NULL) {
        PyErr_NoMemory();
        into_first = -1;
    }
    if (into_first >= 0) {
        double *out = (double *)views[0].buf + HEADER;
        const double *first = (const double *)views[1].buf + HEADER, *second = (const double *)views[2].buf + HEADER;
        const double *other = into_first ? second : first;
        int release = d * (d + 1) / 2 >= RELEASE_GIL_MIN_VALUES;
        PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
        for (Py_ssize_t i = 0; i < d; i++) {
            double s1 = first[i], s2 = second[i], m1 = first[d + i], m2 = second[d + i];
            double ds = s2 - s1;
            double delta = ds + (m2 - m1);
            t[i] = c.scd * delta;
            out[d + i] = c.f1 * m1 + c.f2 * (ds + m2);
            out[i] = s1;
        }
        if (into_first) {
            triangle_merge_first(out + 2 * d, other + 2 * d, t, d, c.c1, c.c2);
        }
        else {
            triangle_merge_second(out + 2 * d, other + 2 * d, t, d, c.c1, c.c2);
        }
        if (release) PyEval_RestoreThread(ts);
    }
    if (t != small && t != NULL) PyMem_RawFree(t);
    for (int j = 0; j < 3; j++) PyBuffer_Release(&views[j]);
    if (into_first < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef native_methods[] = {
    {"moments_add", (PyCFunction)(void (*)(void))native_moments_add, METH_FASTCALL, moments_add_doc},
    {"moments_merge", (PyCFunction)(void (*)(void))native_moments_merge, METH_FASTCALL, moments_merge_doc},
    {"covariance_add", (PyCFunction)(void (*)(void))native_covariance_add, METH_FASTCALL, covariance_add_doc},
    {"covariance_merge", (PyCFunction)(void (*)(void))native_covariance_merge, METH_FASTCALL, covariance_merge_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "parallelaverage._native_moments",
    .m_doc = "Element loops of the Moments and Covariance accumulators on packed float64 states.",
    .m_size = 0,
    .m_methods = native_methods,
};

PyMODINIT_FUNC
PyInit__native_moments(void)
{
    return PyModuleDef_Init(&native_module);
}
