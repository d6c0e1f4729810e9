/*
 * parallelaverage._native: fused one-pass Welford kernels on packed states.
 *
 * A state is one contiguous float64 buffer (parallelaverage/_packed.py has the
 * reference of its layout and of the header arithmetic below):
 *
 *     [count, npos, W_m, W_e, S_m, S_e, P_m, P_e, flags, tag,
 *      shift[k], mean[k], u[k]]
 *
 * count: samples; npos: samples of positive weight; W, S, P: the sum of the
 * weights, of their squares, and of w_i w_j over pairs i != j (= W^2 - S), each
 * as a mantissa in [0.5, 1) and an exponent, so that no sum of finite weights
 * overflows or underflows and P is free of the cancellation of W^2 - S.
 *
 * Per element: `shift` a reference value, `mean` the weighted mean minus the
 * shift, and `u` the unbiased weighted variance M2 / (W - S/W) itself.
 *
 * - Subtracting the shift first keeps the update exact for data far from zero
 *   (1e12 + noise): x - shift is exact there (Sterbenz). The shift is the first
 *   sample of positive weight (a zero weight never becomes the shift), and it is
 *   moved to the running mean, exactly (TwoSum: shift + mean does not change),
 *   about n^(1/3) times in n samples (11 adds of the first 100) and on the first
 *   add after a merge: an outlier that became the shift no longer costs the
 *   mean its accuracy.
 * - u is updated as u' = a u + (sb delta)^2 with a, sb^2 in [0, 1] computed
 *   from the header: it overflows only when the variance itself does, and the
 *   weights may lie anywhere in the float64 range.
 * - The mean is updated as g mean + f d (g = W/W', f = w/W'), which keeps
 *   +-inf means (the mean of [inf, inf] is inf) where mean + f (d - mean)
 *   would make inf - inf.
 * - For 64-bit integers, the integer part of the shift is subtracted in
 *   integer arithmetic: values near 2^62 keep every digit.
 * - A float64 sample beyond 2^1021 (where x - shift could overflow) takes a
 *   scaled path for its elements, and sets the EXTREME flag after which every
 *   element with such a shift does (the scaled path re-centres the element, so
 *   the mean of [1e308, 1e308, -1e308] is 3.3e307, not -inf).
 *
 * A complex128 state is the same layout over the interleaved (re, im) doubles.
 * The same packed layout is what MPI_Allreduce sends and what snapshots store,
 * so one merge kernel serves both.  The pure-numpy twin of every kernel lives in
 * parallelaverage/_kernels.py and gives the same bits: no fused multiply-add
 * (-std=c11 turns contraction off), the same operations in the same order.
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

/* ----------------------------------------------------------------- layout */

#define HEADER 10
enum { COUNT, NPOS, W_M, W_E, S_M, S_E, P_M, P_E, FLAGS, TAG };
#define FORMAT_TAG 2.0
#define FLAG_EXTREME 1
#define FLAG_RECENTRE 2
#define FLAG_NONFINITE 4 /* some element's mean is infinite or NaN */
#define LIMIT 0x1p1021   /* below it no difference of the recurrence overflows */
#define SCALE 16.0       /* the scaled path divides by this: exact */
#define TINY 0x1p-1074   /* a positive weight fraction stays > 0: 0 * inf is NaN */

/* ------------------------------------------- floats of unlimited exponent */

typedef struct {
    double m; /* in [0.5, 1), or 0 */
    long e;
} xf;

/* frexp and ldexp done on the bits where the result is normal (both are exact
 * there; the libm calls cost more than the rest of a small add). */
static xf
xf_norm(double m, long e)
{
    uint64_t bits;
    memcpy(&bits, &m, sizeof bits);
    int biased = (int)((bits >> 52) & 0x7FF);
    if (biased == 0 || biased == 0x7FF) { /* zero, subnormal (or never: inf, nan) */
        if (m == 0.0) {
            return (xf){0.0, 0};
        }
        int k;
        double r = frexp(m, &k);
        return (xf){r, e + k};
    }
    bits = (bits & ~((uint64_t)0x7FF << 52)) | ((uint64_t)1022 << 52);
    double r;
    memcpy(&r, &bits, sizeof r);
    return (xf){r, e + (biased - 1022)};
}

static int
clamp_exponent(long e)
{
    return e > 100000 ? 100000 : e < -100000 ? -100000 : (int)e;
}

/* m * 2^e for m in [0.5, 1) or 0 */
static double
scaled_mantissa(double m, long e)
{
    long biased = 1022 + e;
    if (m == 0.0 || biased < 1 || biased > 2046) {
        return ldexp(m, clamp_exponent(e)); /* 0, subnormal or overflow: rounded by libm */
    }
    uint64_t bits;
    memcpy(&bits, &m, sizeof bits);
    bits = (bits & ~((uint64_t)0x7FF << 52)) | ((uint64_t)biased << 52);
    double r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

static xf xf_of(double v) { return xf_norm(v, 0); }
static xf xf_get(const double *h, int slot) { return (xf){h[slot], (long)h[slot + 1]}; }
static void xf_set(double *h, int slot, xf v) { h[slot] = v.m; h[slot + 1] = (double)v.e; }
static xf xf_mul(xf a, xf b) { return xf_norm(a.m * b.m, a.e + b.e); }
static xf xf_div(xf a, xf b) { return xf_norm(a.m / b.m, a.e - b.e); }
static xf xf_twice(xf a) { return a.m != 0.0 ? (xf){a.m, a.e + 1} : a; }

static xf
xf_add(xf a, xf b)
{
    if (a.m == 0.0) return b;
    if (b.m == 0.0) return a;
    long e = a.e > b.e ? a.e : b.e;
    return xf_norm(scaled_mantissa(a.m, a.e - e) + scaled_mantissa(b.m, b.e - e), e);
}

static xf
xf_sqrt(xf a)
{
    if (a.m == 0.0) return a;
    double m = a.m;
    long e = a.e;
    if (e & 1) {
        m *= 2.0;
        e -= 1;
    }
    return xf_norm(sqrt(m), e / 2);
}

static double xf_double(xf a) { return scaled_mantissa(a.m, a.e); }

/* a < b for a, b >= 0 */
static int
xf_less(xf a, xf b)
{
    if (a.m == 0.0 || b.m == 0.0) return a.m < b.m;
    return a.e != b.e ? a.e < b.e : a.m < b.m;
}

static int xf_equal(xf a, xf b) { return a.m == b.m && a.e == b.e; }

/* ------------------------------------------------------- header arithmetic */

typedef struct {
    double f, g, a, sb; /* mean' = g mean + f d;  u' = a u + (sb delta)^2 */
} add_coef;

/* One sample of weight w > 0 into a header of positive weight: updates W, S, P
 * and returns the coefficients (see _packed.add_coefficients). */
static add_coef
add_coefficients(double *h, double w)
{
    if (fabs(h[W_E]) <= 300.0 && fabs(h[S_E]) <= 300.0 && (h[P_M] == 0.0 || fabs(h[P_E]) <= 300.0) &&
        w >= 0x1p-300 && w <= 0x1p300) {
        /* every value below stays normal: the same operations on plain doubles
         * round exactly as the unlimited-range ones (the common case, faster) */
        double W = scaled_mantissa(h[W_M], (long)h[W_E]), S = scaled_mantissa(h[S_M], (long)h[S_E]);
        double P = scaled_mantissa(h[P_M], (long)h[P_E]);
        double W_new = W + w, P_new = P + 2.0 * (w * W);
        add_coef c = {w / W_new, W / W_new, (P * W_new) / (W * P_new), sqrt((w * W) / P_new)};
        xf_set(h, W_M, xf_of(W_new));
        xf_set(h, S_M, xf_of(S + w * w));
        xf_set(h, P_M, xf_of(P_new));
        return c;
    }
    xf W = xf_get(h, W_M), S = xf_get(h, S_M), P = xf_get(h, P_M), wx = xf_of(w);
    xf W_new = xf_add(W, wx);
    xf P_new = xf_add(P, xf_twice(xf_mul(wx, W)));
    add_coef c;
    c.f = xf_double(xf_div(wx, W_new));
    c.g = xf_double(xf_div(W, W_new));
    if (c.g < TINY) c.g = TINY;
    c.a = xf_double(xf_div(xf_mul(P, W_new), xf_mul(W, P_new)));
    c.sb = xf_double(xf_sqrt(xf_div(xf_mul(wx, W), P_new)));
    xf_set(h, W_M, W_new);
    xf_set(h, S_M, xf_add(S, xf_mul(wx, wx)));
    xf_set(h, P_M, P_new);
    return c;
}

typedef struct {
    double f1, f2, c1, c2, scd;
} merge_coef;

/* The merged header of two states; the coefficients when both have positive
 * weight (returns 1), else 0 (see _packed.merge_coefficients). */
static int
merge_coefficients(const double *h1, const double *h2, double *merged, merge_coef *c)
{
    xf W1 = xf_get(h1, W_M), S1 = xf_get(h1, S_M), P1 = xf_get(h1, P_M);
    xf W2 = xf_get(h2, W_M), S2 = xf_get(h2, S_M), P2 = xf_get(h2, P_M);
    merged[COUNT] = h1[COUNT] + h2[COUNT];
    merged[NPOS] = h1[NPOS] + h2[NPOS];
    merged[FLAGS] = (double)((((int)h1[FLAGS] | (int)h2[FLAGS]) & (FLAG_EXTREME | FLAG_NONFINITE)) | FLAG_RECENTRE);
    merged[TAG] = FORMAT_TAG;
    xf W12 = xf_mul(W1, W2);
    xf W = xf_add(W1, W2);
    xf P = xf_add(xf_add(P1, P2), xf_twice(W12));
    xf_set(merged, W_M, W);
    xf_set(merged, S_M, xf_add(S1, S2));
    xf_set(merged, P_M, P);
    if (W1.m == 0.0 || W2.m == 0.0) {
        merged[FLAGS] = W1.m == 0.0 ? h2[FLAGS] : h1[FLAGS]; /* the other state, as it was */
        return 0;
    }
    c->f1 = xf_double(xf_div(W1, W));
    if (c->f1 < TINY) c->f1 = TINY;
    c->f2 = xf_double(xf_div(W2, W));
    if (c->f2 < TINY) c->f2 = TINY;
    c->c1 = xf_double(xf_div(xf_mul(P1, W), xf_mul(W1, P)));
    c->c2 = xf_double(xf_div(xf_mul(P2, W), xf_mul(W2, P)));
    c->scd = xf_double(xf_sqrt(xf_div(W12, P)));
    return 1;
}

/* 1 if the state of header h2 is the first operand (keeps its shift): more
 * weight first, then more samples; -1 on a tie. */
static int
second_goes_first(const double *h1, const double *h2)
{
    xf W1 = xf_get(h1, W_M), W2 = xf_get(h2, W_M);
    if (!xf_equal(W1, W2)) return xf_less(W1, W2);
    if (h1[COUNT] != h2[COUNT]) return h2[COUNT] > h1[COUNT];
    return -1;
}

/* Whether the add bringing the positive-weight samples to npos re-centres:
 * at 2, 4, then 2^(b/3) times per doubling of the count, b = floor(log2 npos),
 * i.e. when npos is a multiple of 2^(b - b/3) (see _packed.recentres). */
static int
recentres(double npos_value)
{
    uint64_t npos = (uint64_t)npos_value;
    if (npos < 2) return 0;
    int bits = 0;
#if defined(__GNUC__)
    bits = 63 - __builtin_clzll(npos);
#else
    for (uint64_t v = npos >> 1; v; v >>= 1) bits++;
#endif
    int need = bits - bits / 3;
    return (npos & (((uint64_t)1 << need) - 1)) == 0;
}

/* ------------------------------------------------- exact differences x - s */

/* int64 x minus the double s, rounded once (twice beyond 2^53): the integer
 * part t of s is subtracted in integer arithmetic, with the overflow checked
 * by the signs. t = 2^63 (a shift rounded up from values near INT64_MAX) is
 * INT64_MAX + 1. */
static inline double
diff_i64(int64_t x, double s)
{
    double t = trunc(s);
    if (t >= -0x1p63 && t <= 0x1p63) {
        int top = t == 0x1p63;
        int64_t ti = top ? INT64_MAX : (int64_t)t;
        int64_t di = (int64_t)((uint64_t)x - (uint64_t)ti);
        if (((x ^ ti) & (x ^ di)) >= 0) {
            return ((double)di - (top ? 1.0 : 0.0)) - (s - t);
        }
    }
    return (double)x - s;
}

/* The same for uint64, where t = 2^64 is UINT64_MAX + 1. */
static inline double
diff_u64(uint64_t x, double s)
{
    double t = trunc(s);
    if (t >= 0.0 && t <= 0x1p64) {
        int top = t == 0x1p64;
        uint64_t tu = top ? UINT64_MAX : (uint64_t)t;
        double exact = x >= tu ? (double)(x - tu) : -(double)(tu - x);
        return (exact - (top ? 1.0 : 0.0)) - (s - t);
    }
    return (double)x - s;
}

#define DIFF_PLAIN(X, S) ((double)(X) - (S))
#define DIFF_I64(X, S) diff_i64((X), (S))
#define DIFF_U64(X, S) diff_u64((X), (S))

/* ---------------------------------------------------------------- kernels */

/* `keep` (all ones or zero) ? old : new, on the bits. Written as a select of
 * doubles, GCC vectorizes the store of the result as a masked store
 * (vmaskmovpd), which is microcoded and several times slower on AMD cores;
 * this form gives a vblendvpd and a plain store. */
static inline double
keep_or(double old_value, double new_value, uint64_t keep)
{
    uint64_t o, n;
    memcpy(&o, &old_value, sizeof o);
    memcpy(&n, &new_value, sizeof n);
    uint64_t bits = keep ? o : n;
    double r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* The same with and/or: in the re-centring loop GCC still sees through the
 * select above for the shift (the kept value is the one loaded from the same
 * place) and makes it a masked store again; this one it does not. */
static inline double
keep_or_masked(double old_value, double new_value, uint64_t keep)
{
    uint64_t o, n;
    memcpy(&o, &old_value, sizeof o);
    memcpy(&n, &new_value, sizeof n);
    uint64_t bits = (o & keep) | (n & ~keep);
    double r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* The update of one element; with RECENTRE the shift moves to the mean. The
 * mean is m + f delta, or with GFORM (a state holding an infinite or NaN mean)
 * g m + f d, which keeps an infinite mean infinite where m + f delta would
 * make inf - inf. */
#define UPDATE_ELEMENT(DIFF, xi, i, RECENTRE, GFORM)                           \
    {                                                                          \
        double d = DIFF(xi, shift[i]);                                         \
        double delta = d - mean[i];                                            \
        double m = GFORM ? g * mean[i] + f * d : mean[i] + f * delta;          \
        double t = sb * delta;                                                 \
        u[i] = a * u[i] + t * t;                                               \
        if (RECENTRE) {                                                        \
            double s0 = shift[i];                                              \
            double s = s0 + m;                                                 \
            double bb = s - s0;                                                \
            double rest = (s0 - (s - bb)) + (m - bb);                          \
            uint64_t stays = -(uint64_t)!isfinite(m); /* inf, nan: not moved */ \
            shift[i] = keep_or_masked(s0, s, stays);                           \
            mean[i] = keep_or(m, rest, stays);                                 \
        }                                                                      \
        else {                                                                 \
            mean[i] = m;                                                       \
        }                                                                      \
    }

#define DEFINE_UPDATE(NAME, T, DIFF, RECENTRE, GFORM)                          \
    KERNEL_CLONES static void NAME(const T *restrict x, double *restrict shift, \
                                   double *restrict mean, double *restrict u,  \
                                   Py_ssize_t k, add_coef c)                   \
    {                                                                          \
        const double f = c.f, g = c.g, a = c.a, sb = c.sb;                     \
        for (Py_ssize_t i = 0; i < k; i++) UPDATE_ELEMENT(DIFF, x[i], i, RECENTRE, GFORM) \
    }

/* The first sample of positive weight becomes the shift (non-finite values
 * shift by 0: the mean is then +-inf or NaN, the variance NaN).  Returns the
 * flags the state then needs: EXTREME if some shift is beyond LIMIT,
 * NONFINITE if some value is infinite or NaN. */
#define DEFINE_INIT(NAME, T, DIFF)                                             \
    static int NAME(const T *restrict x, double *restrict shift,               \
                    double *restrict mean, double *restrict u, Py_ssize_t k)   \
    {                                                                          \
        int flags = 0;                                                         \
        for (Py_ssize_t i = 0; i < k; i++) {                                   \
            double v = (double)x[i];                                           \
            shift[i] = isfinite(v) ? v : 0.0;                                  \
            mean[i] = DIFF(x[i], shift[i]);                                    \
            u[i] = isfinite(mean[i]) ? 0.0 : NAN;                              \
            flags |= fabs(shift[i]) > LIMIT ? FLAG_EXTREME : 0;                \
            flags |= isfinite(v) ? 0 : FLAG_NONFINITE;                         \
        }                                                                      \
        return flags;                                                          \
    }

#define FOR_EACH_INPUT_TYPE(X)                                                 \
    X(f64, double, DIFF_PLAIN)                                                 \
    X(f32, float, DIFF_PLAIN)                                                  \
    X(i8, int8_t, DIFF_PLAIN)                                                  \
    X(i16, int16_t, DIFF_PLAIN)                                                \
    X(i32, int32_t, DIFF_PLAIN)                                                \
    X(i64, int64_t, DIFF_I64)                                                  \
    X(u8, uint8_t, DIFF_PLAIN)                                                 \
    X(u16, uint16_t, DIFF_PLAIN)                                               \
    X(u32, uint32_t, DIFF_PLAIN)                                               \
    X(u64, uint64_t, DIFF_U64)

/* four variants per input type: index recentre + 2 gform */
#define DEFINE_ALL(SUFFIX, T, DIFF)                                            \
    DEFINE_UPDATE(update_##SUFFIX##_0, T, DIFF, 0, 0)                          \
    DEFINE_UPDATE(update_##SUFFIX##_1, T, DIFF, 1, 0)                          \
    DEFINE_UPDATE(update_##SUFFIX##_2, T, DIFF, 0, 1)                          \
    DEFINE_UPDATE(update_##SUFFIX##_3, T, DIFF, 1, 1)                          \
    DEFINE_INIT(init_##SUFFIX, T, DIFF)
FOR_EACH_INPUT_TYPE(DEFINE_ALL)

/* The scaled update of one float64 element whose value or shift is beyond
 * LIMIT: everything divided by SCALE (exact), and the shift moved to the mean. */
static void
update_scaled(double x, double *shift, double *mean, double *u, add_coef c)
{
    double xs = x / SCALE, ss = *shift / SCALE, ms = *mean / SCALE;
    double ds = xs - ss;
    double deltas = ds - ms;
    double means = c.g * ms + c.f * ds;
    double ts = (c.sb * deltas) * SCALE;
    *u = c.a * *u + ts * ts;
    double s = ss + means;
    double bb = s - ss;
    double rest = (ss - (s - bb)) + (means - bb);
    if (isfinite(means)) {
        *shift = s * SCALE;
        *mean = rest * SCALE;
    }
    else {
        *mean = means * SCALE;
    }
}

/* The float64 update of a state without EXTREME, vectorized: elements whose
 * value lies beyond LIMIT or is infinite or NaN are left as they were (a
 * blend, in the same pass: no extra sweep over memory), and the return value
 * says whether there were any; update_f64_careful then does them one by one. */
#define DEFINE_GUARDED(NAME, RECENTRE, GFORM)                                  \
    KERNEL_CLONES static int NAME(const double *restrict x, double *restrict shift, \
                                  double *restrict mean, double *restrict u,   \
                                  Py_ssize_t k, add_coef c)                    \
    {                                                                          \
        const double f = c.f, g = c.g, a = c.a, sb = c.sb;                     \
        uint64_t any_beyond = 0;                                               \
        for (Py_ssize_t i = 0; i < k; i++) {                                   \
            double xi = x[i], s0 = shift[i], m0 = mean[i], u0 = u[i];          \
            uint64_t beyond = -(uint64_t)!(fabs(xi) <= LIMIT);                 \
            double d = xi - s0;                                                \
            double delta = d - m0;                                             \
            double m = GFORM ? g * m0 + f * d : m0 + f * delta;                \
            double t = sb * delta;                                             \
            double nu = a * u0 + t * t;                                        \
            if (RECENTRE) {                                                    \
                double s = s0 + m;                                             \
                double bb = s - s0;                                            \
                double rest = (s0 - (s - bb)) + (m - bb);                      \
                uint64_t stays = -(uint64_t)!isfinite(m);                      \
                shift[i] = keep_or_masked(s0, s, beyond | stays);              \
                m = keep_or(m, rest, stays);                                   \
            }                                                                  \
            mean[i] = keep_or(m0, m, beyond);                                  \
            u[i] = keep_or(u0, nu, beyond);                                    \
            any_beyond |= beyond;                                              \
        }                                                                      \
        return any_beyond != 0;                                                \
    }
DEFINE_GUARDED(update_guarded_f64_0, 0, 0)
DEFINE_GUARDED(update_guarded_f64_1, 1, 0)
DEFINE_GUARDED(update_guarded_f64_2, 0, 1)
DEFINE_GUARDED(update_guarded_f64_3, 1, 1)

typedef int (*guarded_fn)(const double *, double *, double *, double *, Py_ssize_t, add_coef);
static const guarded_fn update_guarded_f64[4] = {
    update_guarded_f64_0, update_guarded_f64_1, update_guarded_f64_2, update_guarded_f64_3};

/* Float64 elements one by one: the scaled path for a finite value beyond LIMIT
 * (or, in an EXTREME state, a shift beyond it), the plain update otherwise;
 * with only_beyond, the elements whose value is beyond LIMIT, infinite or NaN
 * only. Returns FLAG_EXTREME if an element took the scaled path, with
 * FLAG_NONFINITE if a value was infinite or NaN. */
static int
update_f64_careful(const double *x, double *shift, double *mean, double *u, Py_ssize_t k,
                   add_coef c, int variant, int extreme, int only_beyond)
{
    const double f = c.f, g = c.g, a = c.a, sb = c.sb;
    int flags = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (only_beyond && fabs(x[i]) <= LIMIT) {
            continue;
        }
        if (!isfinite(x[i])) {
            flags |= FLAG_NONFINITE;
        }
        if ((fabs(x[i]) > LIMIT && isfinite(x[i])) || (extreme && fabs(shift[i]) > LIMIT)) {
            update_scaled(x[i], shift + i, mean + i, u + i, c);
            flags |= FLAG_EXTREME;
        }
        else {
            switch (variant) {
            case 0: UPDATE_ELEMENT(DIFF_PLAIN, x[i], i, 0, 0) break;
            case 1: UPDATE_ELEMENT(DIFF_PLAIN, x[i], i, 1, 0) break;
            case 2: UPDATE_ELEMENT(DIFF_PLAIN, x[i], i, 0, 1) break;
            default: UPDATE_ELEMENT(DIFF_PLAIN, x[i], i, 1, 1) break;
            }
        }
    }
    return flags;
}

/* A float64 sample; returns the flags it sets (see update_f64_careful). Tiny
 * samples (a Python float) go element by element: the vector loop's set-up
 * costs more than it saves there. */
static int
update_f64_any(const double *x, double *shift, double *mean, double *u, Py_ssize_t k,
               add_coef c, int variant, int extreme)
{
    if (extreme || k < 8) {
        return update_f64_careful(x, shift, mean, u, k, c, variant, extreme, 0);
    }
    int any_beyond = update_guarded_f64[variant](x, shift, mean, u, k, c);
    return any_beyond ? update_f64_careful(x, shift, mean, u, k, c, variant, 0, 1) : 0;
}

/* FLAG_NONFINITE if some float32 value is infinite or NaN (float32 values never
 * exceed LIMIT, and infinities are updated like any value: only the flag). */
static int
f32_flags(const float *x, Py_ssize_t n)
{
    int finite = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        finite &= isfinite(x[i]);
    }
    return finite ? 0 : FLAG_NONFINITE;
}

typedef void (*update_fn)(const void *, double *, double *, double *, Py_ssize_t, add_coef);
typedef int (*init_fn)(const void *, double *, double *, double *, Py_ssize_t);

typedef struct {
    update_fn update[4]; /* index: recentre + 2 gform */
    init_fn init;
    int real;          /* 2 for float64 values (may exceed LIMIT), 1 for float32, 0 for integers */
    int complex_pairs; /* 1 if each buffer item holds two values (re, im) */
} input_kind;

#define KIND(SUFFIX, REAL, PAIRS)                                                          \
    {{(update_fn)update_##SUFFIX##_0, (update_fn)update_##SUFFIX##_1, (update_fn)update_##SUFFIX##_2, \
      (update_fn)update_##SUFFIX##_3}, (init_fn)init_##SUFFIX, REAL, PAIRS}

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
    char ch = format[0];
    Py_ssize_t size = pairs ? itemsize / 2 : itemsize;
    if (ch == 'd' && size == 8) { *out = (input_kind)KIND(f64, 2, pairs); return 1; }
    if (ch == 'f' && size == 4) { *out = (input_kind)KIND(f32, 1, pairs); return 1; }
    if (pairs) {
        return 0;
    }
    int is_signed = (ch == 'b' || ch == 'h' || ch == 'i' || ch == 'l' || ch == 'q' || ch == 'n');
    int is_unsigned = (ch == 'B' || ch == 'H' || ch == 'I' || ch == 'L' || ch == 'Q' || ch == 'N' || ch == '?');
    if (!is_signed && !is_unsigned) {
        return 0;
    }
    switch (size) {
    case 1: *out = is_signed ? (input_kind)KIND(i8, 0, 0) : (input_kind)KIND(u8, 0, 0); return 1;
    case 2: *out = is_signed ? (input_kind)KIND(i16, 0, 0) : (input_kind)KIND(u16, 0, 0); return 1;
    case 4: *out = is_signed ? (input_kind)KIND(i32, 0, 0) : (input_kind)KIND(u32, 0, 0); return 1;
    case 8: *out = is_signed ? (input_kind)KIND(i64, 0, 0) : (input_kind)KIND(u64, 0, 0); return 1;
    default: return 0;
    }
}

/* One sample of weight w into the state (its buffer checked by the caller). */
static void
add_sample(double *st, Py_ssize_t k, const void *x, const input_kind *kind, double w)
{
    double *shift = st + HEADER, *mean = shift + k, *u = mean + k;
    st[COUNT] += 1.0;
    if (w == 0.0) {
        return; /* a zero weight changes nothing but the count, not even with a NaN */
    }
    int flags = (int)st[FLAGS];
    if (st[W_M] == 0.0) {
        int set = kind->init(x, shift, mean, u, k);
        xf wx = xf_of(w);
        xf_set(st, W_M, wx);
        xf_set(st, S_M, xf_mul(wx, wx));
        xf_set(st, P_M, (xf){0.0, 0});
        st[NPOS] = 1.0;
        st[FLAGS] = (double)set;
        return;
    }
    add_coef c = add_coefficients(st, w);
    st[NPOS] += 1.0;
    int recentre = (flags & FLAG_RECENTRE) || recentres(st[NPOS]);
    int variant = (recentre ? 1 : 0) + ((flags & FLAG_NONFINITE) ? 2 : 0);
    int set = 0;
    if (kind->real == 2) {
        set = update_f64_any(x, shift, mean, u, k, c, variant, flags & FLAG_EXTREME);
    }
    else {
        if (kind->real == 1) {
            set = f32_flags(x, k);
        }
        kind->update[variant](x, shift, mean, u, k, c);
    }
    st[FLAGS] = (double)((flags | set) & ~FLAG_RECENTRE);
}

/* -------------------------------------------------------------- merges */

/* The merge of element i of two states of positive weight, `first` keeping its
 * shift; the scaled variant when a shift lies beyond LIMIT. */
#define MERGE_ELEMENT(i, shift1, mean1, u1, shift2, mean2, u2)                  \
    double ds = shift2[i] - shift1[i];                                         \
    double delta = ds + (mean2[i] - mean1[i]);                                 \
    double merged_mean = c.f1 * mean1[i] + c.f2 * (ds + mean2[i]);             \
    double t = c.scd * delta;                                                  \
    double merged_u = c.c1 * u1[i] + c.c2 * u2[i] + t * t;                     \
    double merged_shift = shift1[i];

static void
merge_scaled(double shift1, double mean1, double u1, double shift2, double mean2, double u2,
             merge_coef c, double *shift, double *mean, double *u)
{
    double s1 = shift1 / SCALE, s2 = shift2 / SCALE, m1 = mean1 / SCALE, m2 = mean2 / SCALE;
    double dss = s2 - s1;
    double deltas = dss + (m2 - m1);
    double means = c.f1 * m1 + c.f2 * (dss + m2);
    double ts = (c.scd * deltas) * SCALE;
    *u = c.c1 * u1 + c.c2 * u2 + ts * ts;
    double s = s1 + means;
    double bb = s - s1;
    double rest = (s1 - (s - bb)) + (means - bb);
    if (isfinite(means)) {
        *shift = s * SCALE;
        *mean = rest * SCALE;
    }
    else {
        *shift = shift1;
        *mean = means * SCALE;
    }
}

/* The three loops differ only in where the result goes (their restrict
 * pointers need separate loops to vectorize); one expression keeps them equal
 * to the bit. */

/* first = first (+) second */
KERNEL_CLONES static void
merge_into_first(double *restrict shift1, double *restrict mean1, double *restrict u1,
                 const double *restrict shift2, const double *restrict mean2,
                 const double *restrict u2, Py_ssize_t k, merge_coef c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        MERGE_ELEMENT(i, shift1, mean1, u1, shift2, mean2, u2)
        (void)merged_shift;
        mean1[i] = merged_mean;
        u1[i] = merged_u;
    }
}

/* second = first (+) second */
KERNEL_CLONES static void
merge_into_second(const double *restrict shift1, const double *restrict mean1,
                  const double *restrict u1, double *restrict shift2, double *restrict mean2,
                  double *restrict u2, Py_ssize_t k, merge_coef c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        MERGE_ELEMENT(i, shift1, mean1, u1, shift2, mean2, u2)
        shift2[i] = merged_shift;
        mean2[i] = merged_mean;
        u2[i] = merged_u;
    }
}

/* out = first (+) second, a third state */
KERNEL_CLONES static void
merge_to(double *restrict shift_o, double *restrict mean_o, double *restrict u_o,
         const double *restrict shift1, const double *restrict mean1, const double *restrict u1,
         const double *restrict shift2, const double *restrict mean2, const double *restrict u2,
         Py_ssize_t k, merge_coef c)
{
    for (Py_ssize_t i = 0; i < k; i++) {
        MERGE_ELEMENT(i, shift1, mean1, u1, shift2, mean2, u2)
        shift_o[i] = merged_shift;
        mean_o[i] = merged_mean;
        u_o[i] = merged_u;
    }
}

/* Merge elements 0..k-1 of the sections at s1 and s2 (shift, mean, u at
 * offsets 0, stride, 2 stride) into those at so, which is s1, s2 or apart. */
static void
merge_sections(double *so, const double *s1, const double *s2, Py_ssize_t k, Py_ssize_t stride,
               merge_coef c, int extreme)
{
    if (extreme) {
        /* one element at a time: the scaled path where a shift lies beyond LIMIT */
        for (Py_ssize_t i = 0; i < k; i++) {
            const double *shift1 = s1, *mean1 = s1 + stride, *u1 = s1 + 2 * stride;
            const double *shift2 = s2, *mean2 = s2 + stride, *u2 = s2 + 2 * stride;
            double rs, rm, ru;
            if (fabs(shift1[i]) > LIMIT || fabs(shift2[i]) > LIMIT) {
                merge_scaled(shift1[i], mean1[i], u1[i], shift2[i], mean2[i], u2[i], c, &rs, &rm, &ru);
            }
            else {
                MERGE_ELEMENT(i, shift1, mean1, u1, shift2, mean2, u2)
                rs = merged_shift;
                rm = merged_mean;
                ru = merged_u;
            }
            so[i] = rs;
            so[stride + i] = rm;
            so[2 * stride + i] = ru;
        }
    }
    else if (so == s1) {
        merge_into_first(so, so + stride, so + 2 * stride, s2, s2 + stride, s2 + 2 * stride, k, c);
    }
    else if (so == s2) {
        merge_into_second(s1, s1 + stride, s1 + 2 * stride, so, so + stride, so + 2 * stride, k, c);
    }
    else {
        merge_to(so, so + stride, so + 2 * stride, s1, s1 + stride, s1 + 2 * stride,
                 s2, s2 + stride, s2 + 2 * stride, k, c);
    }
}

/* ------------------------------------------------------- state buffers */

typedef struct {
    Py_buffer view;
    double *data;
    Py_ssize_t k; /* doubles per section */
} state_view;

/* check_tag: the header must be a packed state's (merge_range's states carry
 * only slices: their headers are passed apart) */
static int
get_state(PyObject *obj, state_view *s, int writable, const char *name, int check_tag)
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
    if (!(is_double || (is_bytes && s->view.len % (Py_ssize_t)sizeof(double) == 0)) || n < HEADER ||
        (n - HEADER) % 3 != 0 || (check_tag && ((double *)s->view.buf)[TAG] != FORMAT_TAG)) {
        PyErr_Format(PyExc_ValueError,
                     "%s is not a packed Welford state (float64, layout %d: see parallelaverage/_packed.py)",
                     name, (int)FORMAT_TAG);
        PyBuffer_Release(&s->view);
        return -1;
    }
    s->data = (double *)s->view.buf;
    s->k = (n - HEADER) / 3;
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
get_states(PyObject *const *args, int n, int writable, const char *const *names, state_view *views,
           int check_tag)
{
    for (int i = 0; i < n; i++) {
        if (get_state(args[i], &views[i], i < writable, names[i], check_tag) < 0) {
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

/* Read a header of HEADER doubles from any float64 buffer. */
static int
get_header(PyObject *obj, double *out, const char *name)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    const char *fmt = view.format;
    int is_double = fmt != NULL && (strcmp(fmt, "d") == 0 || strcmp(fmt, "<d") == 0 || strcmp(fmt, "=d") == 0);
    if (!is_double || view.len != HEADER * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "%s must be %d float64 values (a packed state's header)", name, HEADER);
        PyBuffer_Release(&view);
        return -1;
    }
    memcpy(out, view.buf, HEADER * sizeof(double));
    PyBuffer_Release(&view);
    return 0;
}

/* Whether two packed states of k elements share any memory. */
static int
ranges_overlap(const double *x, const double *y, Py_ssize_t k)
{
    Py_ssize_t n = HEADER + 3 * k;
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
    if (PyBool_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "weight must be a real number, not a bool");
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
    if (get_state(args[0], &s, 1, "state", 1) < 0) {
        return NULL;
    }
    if (PyFloat_CheckExact(args[1]) && s.k == 1) {
        /* a Python float into a scalar state: no buffer to acquire */
        double value = PyFloat_AS_DOUBLE(args[1]);
        input_kind kind = KIND(f64, 2, 0);
        add_sample(s.data, 1, &value, &kind, w);
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
    int release = s.k >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    add_sample(s.data, s.k, x.buf, &kind, w);
    if (release) {
        PyEval_RestoreThread(ts);
    }
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
"included). Either may be empty or hold only zero weights. Both must have\n"
"the same size. The operand of more weight keeps its shift, and the result\n"
"does not depend on the order of the arguments, to the bit.");

static PyObject *
native_merge(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "merge(state_a, state_b) takes 2 arguments");
        return NULL;
    }
    static const char *const names[] = {"state_a", "state_b"};
    state_view views[2];
    if (get_states(args, 2, 1, names, views, 1) < 0) {
        return NULL;
    }
    double *sa = views[0].data;
    const double *sb = views[1].data;
    Py_ssize_t k = views[0].k;
    int release = k >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    if (sb[W_M] == 0.0) {
        sa[COUNT] += sb[COUNT]; /* no positive weight: only its count */
    }
    else if (sa[W_M] == 0.0) {
        double count = sa[COUNT];
        memmove(sa, sb, (size_t)(HEADER + 3 * k) * sizeof(double));
        sa[COUNT] += count;
    }
    else {
        int swap = second_goes_first(sa, sb);
        if (swap < 0) {
            swap = memcmp(sb, sa, (size_t)(HEADER + 3 * k) * sizeof(double)) > 0;
        }
        const double *first = swap ? sb : sa, *second = swap ? sa : sb;
        double merged[HEADER];
        merge_coef c;
        merge_coefficients(first, second, merged, &c);
        merge_sections(sa + HEADER, first + HEADER, second + HEADER, k, k, c, (int)merged[FLAGS] & FLAG_EXTREME);
        memcpy(sa, merged, sizeof merged);
    }
    if (release) {
        PyEval_RestoreThread(ts);
    }
    release_states(views, 2);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(merge_range_doc,
"merge_range(out, a, b, lo, hi, header_a, header_b)\n--\n\n"
"Chan's merge restricted to elements lo..hi-1 of each section of three packed\n"
"states of the same size: out = a (+) b there, where header_a and header_b\n"
"(float64 arrays of the header's size) are the headers of the states a and b\n"
"stand for; either may have zero weight. `out` may be `a` or `b` itself, or a\n"
"third state. Headers of the states are left alone: the caller merges them.\n"
"The operand of more weight keeps its shift (a on a tie). This is the step\n"
"of a reduce-scatter, where each rank merges one slice.");

static PyObject *
native_merge_range(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "merge_range(out, a, b, lo, hi, header_a, header_b) takes 7 arguments");
        return NULL;
    }
    Py_ssize_t lo, hi;
    double ha[HEADER], hb[HEADER];
    if ((lo = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred()) return NULL;
    if ((hi = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred()) return NULL;
    if (get_header(args[5], ha, "header_a") < 0 || get_header(args[6], hb, "header_b") < 0) return NULL;
    static const char *const names[] = {"out", "a", "b"};
    state_view views[3];
    if (get_states(args, 3, 1, names, views, 0) < 0) {
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
    Py_ssize_t n = hi - lo;
    int release = n >= RELEASE_GIL_MIN_ELEMENTS;
    PyThreadState *ts = release ? PyEval_SaveThread() : NULL;
    double *so = dout + HEADER + lo;
    if (hb[W_M] == 0.0 || ha[W_M] == 0.0) {
        const double *source = hb[W_M] == 0.0 ? da : db;
        if (source != dout) {
            for (int section = 0; section < 3; section++) {
                memcpy(so + section * k, source + HEADER + lo + section * k, (size_t)n * sizeof(double));
            }
        }
    }
    else {
        int swap = second_goes_first(ha, hb) == 1;
        const double *first = swap ? db : da, *second = swap ? da : db;
        double merged[HEADER];
        merge_coef c;
        merge_coefficients(swap ? hb : ha, swap ? ha : hb, merged, &c);
        merge_sections(so, first + HEADER + lo, second + HEADER + lo, n, k, c, (int)merged[FLAGS] & FLAG_EXTREME);
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
