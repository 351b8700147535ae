/* lstmkit's fused CPU LSTM layer: the time loop of the forward and of BPTT, in plain C.
 *
 * Built at first use by lstmkit/ops/lstm_cpu.py (cc -O3 -march=native -fopenmp; no torch or Python
 * headers) and called through ctypes with raw float32 pointers. The GEMMs are MKL's, taken from the libtorch_cpu that
 * torch already loaded (addresses handed over by lstm_cpu.py); nothing here links against torch.
 *
 * What runs here is only what must run step by step (Appleyard et al. 2016):
 *   forward, per step t:  a_t += U h_{t-1}            one GEMM on U packed once (MKL "packed GEMM")
 *                         i, f, o = sigma(.), g = tanh(.)          eq. 6.51-6.54, one pass over the row
 *                         c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)   eq. 6.55-6.56, same pass
 *                         h_t = R h_t                  (projection, proj_size > 0)
 *   backward, per step:   dz_t from the saved gates and cells, then dh_{t-1} = U^T dz_t
 * Variants (lstmkit/ops/cell.py; equations in lstmkit/reference/lstm_numpy.py) run in the same passes, as
 * `forward_row_variant` / `backward_row_variant`: peepholes (p = [p_i | p_f | p_o]), the coupled input-forget
 * gate (three gate blocks i, g, o; f = 1 - i), the cell clip and zoneout of c; the standard cell keeps its own
 * loops. Recurrent dropout (h_{t-1} * m before U, and m on dh_{t-1}) and zoneout of h (h_t mixed with h_{t-1})
 * are terms of the time loop around the GEMMs, so a cell with only those runs the standard rows.
 * Layer normalisation (Ba et al. 2016) runs as separate per-row passes around those rows, so it adds no copies of
 * them: the step's GEMM writes U h_{t-1} into its own rows v (not into a), `layer_norm_add` normalises v in place and
 * adds it to a; after the row, `layer_norm_output` recomputes m = o tanh(LN(c_t)) from the row's kept o and c_t. In
 * BPTT, `layer_norm_output_backward` takes the gradient through m (and zoneout of c's split of dc) before the row,
 * which then runs with dm = 0, and `layer_norm_backward_row` carries dz back through LN(U h) for dh_{t-1} and dU.
 * LN(W x_t) of every step runs before the loop, all rows at once (`lk_layer_norm_forward`, backward after BPTT).
 * The input projection W x_t of every step comes in precomputed (one big GEMM in torch; the loop adds b),
 * and the weight gradients (dW, dU, dR, db) are big GEMMs in torch after the loop.
 *
 * Rows (sequences) never interact, so each thread takes a contiguous block of rows and runs the whole time
 * loop on it: no barrier per step. Rows are packed as in torch's PackedSequence: step t holds
 * batch_sizes[t] rows starting at offsets[t], longest sequences first, so finished sequences drop out of
 * the GEMMs. The running state h, c lives in [B, P] / [B, H] buffers that start as h0, c0: a row keeps its
 * final state once its sequence ends (forward) or holds h0 until its sequence starts (reverse).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* CBLAS constants (mkl_cblas.h). */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, PACKED = 151, B_MATRIX = 162 };

typedef size_t (*pack_get_size_fn)(int identifier, int m, int n, int k);
typedef void (*pack_fn)(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                        const float *src, int ld, float *dest);
typedef void (*compute_fn)(int layout, int transa, int transb, int m, int n, int k, const float *a, int lda,
                           const float *b, int ldb, float beta, float *c, int ldc);
typedef int (*set_threads_local_fn)(int nthreads);

static pack_get_size_fn blas_pack_get_size;
static pack_fn blas_pack;
static compute_fn blas_compute;
static set_threads_local_fn blas_set_threads_local;

int lk_version(void) { return 5; }

void lk_init(void *pack_get_size, void *pack, void *compute, void *set_threads_local) {
    blas_pack_get_size = (pack_get_size_fn)pack_get_size;
    blas_pack = (pack_fn)pack;
    blas_compute = (compute_fn)compute;
    blas_set_threads_local = (set_threads_local_fn)set_threads_local;
}

/* ---- pointwise math, written so that gcc vectorises the loops that inline it ---- */

/* Inlined whatever gcc's size budget says: a loop calling one of these stays scalar. */
#define LK_ALWAYS_INLINE static inline __attribute__((always_inline))
/* Compiled once, called per row: gcc's loop unswitching in the time loops otherwise inlined the row copies at several
 * call sites (the layer-norm passes and these: a build of 6.6 s instead of 5.x, user time). */
#define LK_ONCE static __attribute__((noinline))

/* e^x for x in [-87, 87] (clamped, so that 1 + e^x stays in lk_recip's range), relative error ~1e-7:
 * x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor series to r^7 (next term < 1e-8 relative), 2^n built in the
 * exponent bits. NaN stays NaN. */
LK_ALWAYS_INLINE float lk_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 87.0f ? 87.0f : x;
    float n = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;  /* ln2 split in two (Cody & Waite) so r keeps its low bits */
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

/* 1/a for a in [1, 2^126] by Newton's iteration r <- r (2 - a r) from the classic bit-trick estimate (12%
 * error; three iterations square it down to ~1e-7). Vectorised it costs a third of a division, which is the
 * slowest instruction of the pass (five per element), and it keeps NaN a NaN without -ffast-math. */
LK_ALWAYS_INLINE float lk_recip(float a) {
    union { int32_t i; float f; } r;
    r.f = a;
    r.i = 0x7EF311C3 - r.i;
    float x = r.f;
    x = x * (2.0f - a * x);
    x = x * (2.0f - a * x);
    x = x * (2.0f - a * x);
    return x;
}

LK_ALWAYS_INLINE float lk_sigmoid(float x) { return lk_recip(1.0f + lk_exp(-x)); }

/* tanh from e^{-2|x|}; below |x| = 1/16 its odd series (to x^7), where 1 - e^{-2|x|} would cancel. */
LK_ALWAYS_INLINE float lk_tanh(float x) {
    float ax = __builtin_fabsf(x);
    float e = lk_exp(-2.0f * ax);
    float t = (1.0f - e) * lk_recip(1.0f + e);
    t = x < 0.0f ? -t : t;
    float x2 = x * x;
    float series = x + x * x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f)));
    return ax < 0.0625f ? series : t;
}

/* One row of the forward's pointwise pass: a = [a_i | a_f | a_g | a_o] pre-activations (W x + U h) in, plus
 * the bias b here rather than in torch's input GEMM (addmm with a bias took 14.2 ms where mm took 11.0 on
 * config e, measured); c: c_{t-1} in,
 * c_t out; m = o tanh(c_t). With `keep` (training), the activated gates overwrite a and c_t goes to cell_out
 * for the backward; without, neither is written (inference moves less memory). */
static inline void forward_row(int H, float *restrict a, const float *restrict b, float *restrict c,
                               float *restrict cell_out, float *restrict m, const int keep) {
    float *restrict ai = a, *restrict af = a + H, *restrict ag = a + 2 * H, *restrict ao = a + 3 * H;
    const float *restrict bi = b, *restrict bf = b + H, *restrict bg = b + 2 * H, *restrict bo = b + 3 * H;
    for (int j = 0; j < H; j++) {
        float i = lk_sigmoid(ai[j] + bi[j]), f = lk_sigmoid(af[j] + bf[j]), g = lk_tanh(ag[j] + bg[j]);
        float o = lk_sigmoid(ao[j] + bo[j]);
        float cn = f * c[j] + i * g; /* 6.55 */
        if (keep) {
            ai[j] = i; af[j] = f; ag[j] = g; ao[j] = o;
            cell_out[j] = cn;
        }
        c[j] = cn;
        m[j] = o * lk_tanh(cn); /* 6.56 */
    }
}

/* The variants' row: as forward_row, with peepholes (peep = [p_i | p_f | p_o]), coupled gates (a holds the
 * blocks i, g, o; f = 1 - i, and nothing of f is written back), a cell clip (clip > 0) and zoneout of c (zone:
 * zc is the row's mask, 1 = keep c_{t-1}, or in evaluation a row of the rate; zone 0: off): the running state
 * becomes c_t = c~_t + z (c_{t-1} - c~_t), while cell_out keeps c~_t (what tanh, o and the clip saw) and, with
 * keep, state_out c_t, the c_{t-1} of the next step's backward.
 * coupled, peephole, zone and keep are compile-time constants in every copy `forward_row_variant` calls: with
 * them known, each copy is a branch-free loop that gcc vectorises like forward_row; one loop testing them at
 * run time stayed scalar and made a peephole train step 1.6x the standard cell's (config b, Xeon). */
LK_ALWAYS_INLINE void forward_row_variant_body(
    int H, const int coupled, const int peephole, const int zone, const int keep, float clip, float *restrict a,
    const float *restrict b, const float *restrict peep, const float *restrict zc,
    float *restrict c, float *restrict cell_out, float *restrict state_out, float *restrict m) {
    const int G = coupled ? 3 : 4;
    const float limit = clip > 0.0f ? clip : INFINITY; /* the clip as a select, never a branch */
    float *restrict ai = a, *restrict af = a + H, *restrict ag = a + (G - 2) * H, *restrict ao = a + (G - 1) * H;
    const float *restrict bi = b, *restrict bf = b + H, *restrict bg = b + (G - 2) * H, *restrict bo = b + (G - 1) * H;
    for (int j = 0; j < H; j++) {
        float cp = c[j];
        float zi = ai[j] + bi[j], zf = coupled ? 0.0f : af[j] + bf[j], zo = ao[j] + bo[j];
        if (peephole) { zi += peep[j] * cp; zf += peep[H + j] * cp; }
        float i = lk_sigmoid(zi);
        float f = coupled ? 1.0f - i : lk_sigmoid(zf);
        float g = lk_tanh(ag[j] + bg[j]);
        float cn = f * cp + i * g; /* 6.55 */
        cn = __builtin_fabsf(cn) > limit ? __builtin_copysignf(limit, cn) : cn;
        if (peephole) zo += peep[2 * H + j] * cn;
        float o = lk_sigmoid(zo);
        float state = cn;
        if (zone) state = cn + zc[j] * (cp - cn);
        if (keep) {
            ai[j] = i; ag[j] = g; ao[j] = o;
            if (!coupled) af[j] = f;
            cell_out[j] = cn;
            if (zone) state_out[j] = state;
        }
        c[j] = state;
        m[j] = o * lk_tanh(cn); /* 6.56 */
    }
}

/* The index of a copy of the variant rows: coupled, peephole, zone and keep, each 0 or 1. */
#define LK_VARIANT(coupled, peephole, zone, keep) ((((coupled) * 2 + (peephole)) * 2 + (zone)) * 2 + (keep))
/* X(coupled, peephole, zone, keep) once for each of the 16 copies. */
#define LK_FOR_ZONES(X, co, pe, ke) X(co, pe, 0, ke) X(co, pe, 1, ke)
#define LK_FOR_KEEPS(X, co, pe) LK_FOR_ZONES(X, co, pe, 0) LK_FOR_ZONES(X, co, pe, 1)
#define LK_FOR_VARIANTS(X) LK_FOR_KEEPS(X, 0, 0) LK_FOR_KEEPS(X, 0, 1) LK_FOR_KEEPS(X, 1, 0) LK_FOR_KEEPS(X, 1, 1)
/* The 8 copies with keep = 0 (the backward's, which keeps nothing). */
#define LK_FOR_KEEPS_0(X) LK_FOR_ZONES(X, 0, 0, 0) LK_FOR_ZONES(X, 0, 1, 0) LK_FOR_ZONES(X, 1, 0, 0) LK_FOR_ZONES(X, 1, 1, 0)

/* zc: the row's zoneout mask of c (or the rate's row, `zoneout_row`), NULL: no zoneout; peep NULL: no
 * peepholes; state_out must be given when keep and zoneout of c are. */
LK_ONCE void forward_row_variant(int H, int coupled, float clip, float *restrict a, const float *restrict b,
                                const float *restrict peep, const float *restrict zc,
                                float *restrict c, float *restrict cell_out, float *restrict state_out,
                                float *restrict m, const int keep) {
    switch (LK_VARIANT(coupled != 0, peep != NULL, zc != NULL, keep != 0)) {
#define LK_FORWARD_COPY(co, pe, zo, ke)                                                                           \
    case LK_VARIANT(co, pe, zo, ke):                                                                              \
        forward_row_variant_body(H, co, pe, zo, ke, clip, a, b, peep, zc, c, cell_out, state_out, m);             \
        return;
        LK_FOR_VARIANTS(LK_FORWARD_COPY)
#undef LK_FORWARD_COPY
    }
}

/* Gradients of the pre-activations below 1e-30 become exactly 0. They go on into torch's GEMMs for dW, dU
 * and dx, which run outside our flush-to-zero mode: there, 1e-31 times an input of 1e-8 is a denormal
 * product and every FMA that meets one is ~100x slower (those GEMMs took 35 ms instead of 6 on an IMDB batch,
 * measured). Nothing below 1e-30 can move a float32 weight. */
static inline float flush_tiny(float v) { return __builtin_fabsf(v) < 1e-30f ? 0.0f : v; }

/* One row of BPTT's pointwise pass. z: activated gates of the step; cell = c_t; c_prev = c_{t-1};
 * dm = dL/dm_t (m = o tanh c, before any projection); dc: dL/dc_t carried from step t+1 in,
 * dL/dc_{t-1} out; dz: gradients of the four pre-activations out. */
LK_ONCE void backward_row(int H, const float *restrict z, const float *restrict cell,
                         const float *restrict c_prev, const float *restrict dm, float *restrict dc,
                         float *restrict dz) {
    const float *restrict zi = z, *restrict zf = z + H, *restrict zg = z + 2 * H, *restrict zo = z + 3 * H;
    float *restrict di = dz, *restrict df = dz + H, *restrict dg = dz + 2 * H, *restrict dout = dz + 3 * H;
    for (int j = 0; j < H; j++) {
        float i = zi[j], f = zf[j], g = zg[j], o = zo[j];
        float tc = lk_tanh(cell[j]);
        float d = dc[j] + dm[j] * o * (1.0f - tc * tc);
        di[j] = flush_tiny(d * g * i * (1.0f - i));
        df[j] = flush_tiny(d * c_prev[j] * f * (1.0f - f));
        dg[j] = flush_tiny(d * i * (1.0f - g * g));
        dout[j] = flush_tiny(dm[j] * tc * o * (1.0f - o));
        dc[j] = d * f;
    }
}

/* BPTT of forward_row_variant (the derivation of lstm_numpy.lstm_backward). dpeep: this thread's running sums
 * of the peephole gradients [3H] (given with peepholes); zc: zoneout of c as in the forward, whose
 * share z dc of the carried dL/dc_t goes to c_{t-1} directly and (1 - z) dc to c~_t. One branch-free copy per
 * coupled, peephole and zone, as in the forward. */
LK_ALWAYS_INLINE void backward_row_variant_body(
    int H, const int coupled, const int peephole, const int zone, float clip, const float *restrict z,
    const float *restrict cell, const float *restrict c_prev, const float *restrict peep,
    const float *restrict zc, const float *restrict dm, float *restrict dc, float *restrict dz,
    float *restrict dpeep) {
    const int G = coupled ? 3 : 4;
    const int clipping = clip > 0.0f;
    const float *restrict zi = z, *restrict zf = z + H, *restrict zg = z + (G - 2) * H, *restrict zo = z + (G - 1) * H;
    float *restrict di = dz, *restrict df = dz + H, *restrict dg = dz + (G - 2) * H, *restrict dout = dz + (G - 1) * H;
    for (int j = 0; j < H; j++) {
        float i = zi[j], f = coupled ? 1.0f - zi[j] : zf[j], g = zg[j], o = zo[j], cp = c_prev[j];
        float tc = lk_tanh(cell[j]);
        float dzo = dm[j] * tc * o * (1.0f - o);
        float zone_keep = zone ? zc[j] : 0.0f;
        float d = dm[j] * o * (1.0f - tc * tc);
        if (zone) d += (1.0f - zone_keep) * dc[j]; else d += dc[j];
        if (peephole) d += dzo * peep[2 * H + j];
        d = clipping && !(__builtin_fabsf(cell[j]) < clip) ? 0.0f : d; /* the clip was active: no gradient */
        float dprev = d * f;
        if (zone) dprev += zone_keep * dc[j];
        float dzi, dzf = 0.0f;
        if (coupled) {
            dzi = (d * g - d * cp) * i * (1.0f - i);
        } else {
            dzi = d * g * i * (1.0f - i);
            dzf = d * cp * f * (1.0f - f);
            df[j] = flush_tiny(dzf);
            if (peephole) dprev += dzf * peep[H + j];
        }
        if (peephole) dprev += dzi * peep[j];
        di[j] = flush_tiny(dzi);
        dg[j] = flush_tiny(d * i * (1.0f - g * g));
        dout[j] = flush_tiny(dzo);
        if (peephole) {
            dpeep[j] += dzi * cp;
            dpeep[H + j] += dzf * cp;
            dpeep[2 * H + j] += dzo * cell[j];
        }
        dc[j] = dprev;
    }
}

LK_ONCE void backward_row_variant(int H, int coupled, float clip, const float *restrict z,
                                 const float *restrict cell, const float *restrict c_prev,
                                 const float *restrict peep, const float *restrict zc,
                                 const float *restrict dm, float *restrict dc, float *restrict dz,
                                 float *restrict dpeep) {
    switch (LK_VARIANT(coupled != 0, peep != NULL, zc != NULL, 0)) { /* peep: dpeep given (lk_backward) */
#define LK_BACKWARD_COPY(co, pe, zo, ke)                                                                          \
    case LK_VARIANT(co, pe, zo, ke):                                                                              \
        backward_row_variant_body(H, co, pe, zo, clip, z, cell, c_prev, peep, zc, dm, dc, dz, dpeep);            \
        return;
        LK_FOR_KEEPS_0(LK_BACKWARD_COPY)
#undef LK_BACKWARD_COPY
    }
}

/* ---- layer normalisation: per-row passes around the rows above (equations: lstm_numpy.layer_norm) ---- */


/* Mean and 1/sigma of a row z[0..n): two passes, the variance taken of z - mean, which keeps its precision where
 * the mean is large against the spread. `omp simd` lets gcc vectorise the sums (it may reorder them). */
LK_ALWAYS_INLINE void row_moments(int n, const float *restrict z, float eps, float *mean, float *inv_sigma) {
    float s = 0.0f, q = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++) s += z[j];
    const float mu = s / (float)n;
#pragma omp simd reduction(+ : q)
    for (int j = 0; j < n; j++) q += (z[j] - mu) * (z[j] - mu);
    *mean = mu;
    *inv_sigma = 1.0f / sqrtf(q / (float)n + eps);
}

/* a += LN(v; gain, bias) over one row of G = GH pre-activations; v = U h_{t-1} in, v^ = (v - mean) / sigma out (the
 * backward's), 1/sigma to *inv_sigma. ln: [2, G] gain; bias. */
LK_ONCE void layer_norm_add(int G, float *restrict v, const float *restrict ln, float eps, float *restrict a,
                           float *inv_sigma) {
    float mu, inv;
    row_moments(G, v, eps, &mu, &inv);
    const float *restrict gain = ln, *restrict beta = ln + G;
    for (int j = 0; j < G; j++) {
        float v_hat = (v[j] - mu) * inv;
        v[j] = v_hat;
        a[j] += gain[j] * v_hat + beta[j];
    }
    *inv_sigma = inv;
}

/* m = o tanh(LN(c_t; gain, bias)) over one row of H (6.56 on the normalised cell): cell = c_t, o the row's activated
 * output gate; stats: its mean and 1/sigma out (the backward's). */
LK_ONCE void layer_norm_output(int H, const float *restrict cell, const float *restrict o, const float *restrict ln,
                              float eps, float *restrict m, float *restrict stats) {
    float mu, inv;
    row_moments(H, cell, eps, &mu, &inv);
    const float *restrict gain = ln, *restrict beta = ln + H;
    for (int j = 0; j < H; j++) m[j] = o[j] * lk_tanh(gain[j] * ((cell[j] - mu) * inv) + beta[j]);
    stats[0] = mu;
    stats[1] = inv;
}

/* BPTT of layer_norm_output, before the row's own backward (which then runs with dm = 0 and no zoneout of c):
 * n = LN(c_t), dn = dm o (1 - tanh(n)^2), dz_o = dm tanh(n) o (1 - o) (to dzo, which the row leaves 0), and
 * dL/dc~_t = LN's backward of dn (+ dz_o p_o with peepholes) added to dc, the carried dL/dc_t; with zoneout of c
 * (zc) only its (1 - z) share is, and the z share that reaches c_{t-1} directly goes to `kept`.
 * dln: this thread's running sums [2H] (gain; bias); dpeep_o: the peephole p_o's [H], or NULL; gd: scratch [H]. */
LK_ONCE void layer_norm_output_backward(int H, const float *restrict cell, const float *restrict o,
                                       const float *restrict ln, const float *restrict stats,
                                       const float *restrict peep_o, const float *restrict zc,
                                       const float *restrict dm, float *restrict dc, float *restrict kept,
                                       float *restrict dzo, float *restrict gd, float *restrict dln,
                                       float *restrict dpeep_o) {
    const float *restrict gain = ln, *restrict beta = ln + H;
    const float mu = stats[0], inv = stats[1];
    float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
    for (int j = 0; j < H; j++) {
        float n_hat = (cell[j] - mu) * inv;
        float tn = lk_tanh(gain[j] * n_hat + beta[j]);
        float dn = dm[j] * o[j] * (1.0f - tn * tn);
        dzo[j] = dm[j] * tn * o[j] * (1.0f - o[j]);
        dln[j] += dn * n_hat;
        dln[H + j] += dn;
        gd[j] = gain[j] * dn;
        s1 += gd[j];
        s2 += gd[j] * n_hat;
    }
    const float mean_gd = s1 / (float)H, mean_gd_n = s2 / (float)H;
    /* e = dL/dc~_t from m, over gd; one loop per case: loops testing peep_o and zc stayed scalar */
    for (int j = 0; j < H; j++) gd[j] = inv * (gd[j] - mean_gd - (cell[j] - mu) * inv * mean_gd_n);
    if (peep_o)
        for (int j = 0; j < H; j++) {
            gd[j] += dzo[j] * peep_o[j];
            dpeep_o[j] += dzo[j] * cell[j];
        }
    if (zc)
        for (int j = 0; j < H; j++) {
            kept[j] = zc[j] * dc[j];
            dc[j] = (1.0f - zc[j]) * dc[j] + gd[j];
        }
    else
        for (int j = 0; j < H; j++) dc[j] += gd[j];
}

/* BPTT of layer_norm_add: dz, the row's pre-activation gradients (what reaches LN(v)), to dv = dL/dv (v = U h_{t-1},
 * for dh_{t-1} = U^T dv and dU), with v_hat and 1/sigma of the forward; dln: this thread's sums [2G] (gain; bias). */
LK_ONCE void layer_norm_backward_row(int G, const float *restrict dz, const float *restrict v_hat, float inv,
                                    const float *restrict ln, float *restrict dv, float *restrict dln) {
    const float *restrict gain = ln;
    float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
    for (int j = 0; j < G; j++) {
        float gd = gain[j] * dz[j];
        s1 += gd;
        s2 += gd * v_hat[j];
        dln[j] += dz[j] * v_hat[j];
        dln[G + j] += dz[j];
    }
    const float mean_gd = s1 / (float)G, mean_gd_v = s2 / (float)G;
    for (int j = 0; j < G; j++) dv[j] = flush_tiny(inv * (gain[j] * dz[j] - mean_gd - v_hat[j] * mean_gd_v));
}

/* ---- the time loops, one block of rows [r0, r1) per thread ---- */

/* Flush denormals to zero (FTZ) and read them as zero (DAZ) while a loop runs, then restore the caller's mode.
 * Gradients that fade through hundreds of steps (a loss on the last state of a long review) reach 1e-38 and
 * below, where x86 arithmetic is ~100x slower: one IMDB train step's backward took 320 ms instead of 12 ms,
 * in our loop and in the GEMMs after it that read dz (measured). Flushed, they cost nothing and change
 * nothing a float32 tolerance can see. */
static unsigned int flush_denormals(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040); /* FTZ (bit 15) | DAZ (bit 6) */
    return saved;
#else
    return 0;
#endif
}

static void restore_denormals(unsigned int saved) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

/* Pack op(src) (k x n) once for every step's GEMM. NULL if out of memory. */
static float *pack_b(int trans, int m, int n, int k, const float *src, int ld) {
    float *dest = (float *)malloc(blas_pack_get_size(B_MATRIX, m, n, k));
    if (dest) blas_pack(ROW_MAJOR, B_MATRIX, trans, m, n, k, 1.0f, src, ld, dest);
    return dest;
}


/* The variant features of a call (all zero / NULL: the standard cell). */
typedef struct {
    int coupled;                      /* 1: three gate blocks (i, g, o), f = 1 - i */
    float clip;                       /* > 0: the cell clip */
    const float *peep;                /* [3H] peepholes p_i, p_f, p_o, or NULL */
    const float *h_mask;              /* [B, P] recurrent dropout: U (h_{t-1} * m) (row b: sequence b), or NULL */
    const float *zh, *zc;             /* [N, P] / [N, H] zoneout masks of h and c (1 = keep), or NULL: then */
    float zh_rate, zc_rate;           /* the rate at every unit (evaluation); 0 and NULL: no zoneout */
    const float *ln_h, *ln_c;         /* [2, GH], [2, H] layer normalisation of U h and of c (gain; bias), or NULL */
    float ln_eps;                     /* its epsilon (lstmkit.ops.cell.LAYER_NORM_EPS) */
} variant_t;

static int zones_h(variant_t v) { return v.zh != NULL || v.zh_rate != 0.0f; }
static int zones_c(variant_t v) { return v.zc != NULL || v.zc_rate != 0.0f; }

/* Whether the row functions are the standard cell's: the features of the pointwise pass are off (recurrent
 * dropout and zoneout of h act in the time loop, on whole rows of h around the GEMMs). */
static int is_standard(variant_t v) { return !v.coupled && v.clip <= 0.0f && !v.peep && !zones_c(v); }

/* The row of zoneout of c that the variant rows read: row r's mask, or (evaluation) `rate_row`, H copies of the
 * rate; NULL without zoneout of c. */
static const float *zoneout_row(variant_t v, const float *rate_row, int64_t r, int H) {
    return v.zc ? v.zc + r * H : rate_row;
}

/* H copies of zoneout of c's rate, where it is a rate (evaluation); NULL otherwise, or *failed = 1 without memory. */
static float *rate_row_of(variant_t v, int H, int *failed) {
    if (v.zc || v.zc_rate == 0.0f) return NULL;
    float *row = (float *)malloc(sizeof(float) * (size_t)H);
    if (!row) { *failed = 1; return NULL; }
    for (int j = 0; j < H; j++) row[j] = v.zc_rate;
    return row;
}

typedef struct {
    int T, H, P, reverse, r0, r1;
    const int64_t *batch_sizes, *offsets;
    const float *U, *R;               /* [GH, P], [P, H] (R NULL without a projection); G = 4, or 3 coupled */
    const float *bias;                /* [GH]: b_ih + b_hh (zeros without a bias) */
    variant_t variant;
    int status;                       /* 0, or -1 when the packed weights could not be allocated */
    float *gates;                     /* [N, 4H]: input projection W x in, activated gates out */
    float *cells;                     /* [N, H], or NULL: then the gates are not written back either */
    float *states;                    /* [N, H] c_t after zoneout of c (training), or NULL */
    float *y;                         /* [N, P] */
    float *h_prev;                    /* [N, P] h_{t-1} (* m under recurrent dropout) of each row (for dU), or NULL */
    float *m_out;                     /* [N, H] o tanh(c) before the projection (for dR), or NULL */
    float *v_hat;                     /* [N, GH] layer norm: the normalised U h_{t-1} (training), or NULL */
    float *ln_stats;                  /* [N, 3] layer norm: 1/sigma of U h_{t-1}, mean and 1/sigma of c_t, or NULL */
    float *h, *c;                     /* [B, P], [B, H]: running state, h0/c0 in, final state out */
} forward_job;

/* How many of the rows [r0, r1) step t holds. */
static int active_rows(const int64_t *batch_sizes, int r0, int r1, int t) {
    int64_t end = batch_sizes[t] < r1 ? batch_sizes[t] : r1;
    return end > r0 ? (int)(end - r0) : 0;
}

static void *forward_rows(void *arg) {
    forward_job *job = (forward_job *)arg;
    const variant_t v = job->variant;
    const int standard = is_standard(v);
    const int H = job->H, P = job->P, G = (v.coupled ? 3 : 4) * job->H;
    const int rows = job->r1 - job->r0;
    unsigned int saved_mode = flush_denormals();
    int previous_threads = blas_set_threads_local(1); /* the threads are ours: one MKL thread each */
    /* Each thread packs its own copy: MKL keeps per-call workspace in the packed buffer, and one shared
     * buffer made two threads' GEMMs as slow as one thread doing both (measured). */
    float *U_packed = pack_b(TRANS, rows, G, P, job->U, P);                  /* B = U^T: P x 4H */
    float *R_packed = job->R ? pack_b(TRANS, rows, P, H, job->R, H) : NULL;  /* B = R^T: H x P */
    float *m_scratch = job->R && !job->m_out ? (float *)malloc(sizeof(float) * (size_t)rows * H) : NULL;
    /* h_{t-1} * m for the GEMM when no h_prev buffer keeps it (inference) */
    float *masked = v.h_mask && !job->h_prev ? (float *)malloc(sizeof(float) * (size_t)rows * P) : NULL;
    /* layer norm: U h_{t-1} of the step's rows when no v_hat buffer keeps them (inference); and there the row still
     * keeps o (over a) and c_t, for layer_norm_output: into a row of scratch (c_t, and c_t after zoneout) */
    const int ln = v.ln_h != NULL;
    float *v_scratch = ln && !job->v_hat ? (float *)malloc(sizeof(float) * (size_t)rows * G) : NULL;
    float *cell_scratch = ln && !job->cells ? (float *)malloc(sizeof(float) * 2 * (size_t)H) : NULL;
    float stats_scratch[3];
    int no_memory = 0;
    float *zc_rate_row = rate_row_of(v, H, &no_memory);
    if (no_memory || !U_packed || (job->R && !R_packed) || (job->R && !job->m_out && !m_scratch)
        || (v.h_mask && !job->h_prev && !masked) || (ln && !job->v_hat && !v_scratch)
        || (ln && !job->cells && !cell_scratch)) {
        job->status = -1;
        job->T = 0; /* skip the loop, free what was had */
    }
    for (int s = 0; s < job->T; s++) {
        int t = job->reverse ? job->T - 1 - s : s;
        int n = active_rows(job->batch_sizes, job->r0, job->r1, t);
        if (n == 0) continue;
        int64_t row = job->offsets[t] + job->r0;
        float *a = job->gates + row * G;
        float *h_in = job->h + (int64_t)job->r0 * P;
        if (v.h_mask) { /* recurrent dropout: U sees h_{t-1} * m, and so does dU (through h_prev) */
            float *dest = job->h_prev ? job->h_prev + row * P : masked;
            const float *mask = v.h_mask + (int64_t)job->r0 * P;
            for (int64_t k = 0; k < (int64_t)n * P; k++) dest[k] = h_in[k] * mask[k];
            h_in = dest;
        } else if (job->h_prev) {
            memcpy(job->h_prev + row * P, h_in, sizeof(float) * (size_t)n * P);
            h_in = job->h_prev + row * P;
        }
        float *v_rows = ln ? (job->v_hat ? job->v_hat + row * G : v_scratch) : NULL;
        if (ln) /* v = U h_{t-1}, its own rows: a += LN(v) below, row by row */
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, G, P, h_in, P, U_packed, G, 0.0f, v_rows, G);
        else
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, G, P, h_in, P, U_packed, G, 1.0f, a, G);
        float *m_rows = R_packed ? (job->m_out ? job->m_out + row * H : m_scratch) : job->y + row * P;
        for (int r = 0; r < n; r++) {
            float *c = job->c + (int64_t)(job->r0 + r) * H, *a_row = a + (int64_t)r * G, *m = m_rows + (int64_t)r * H;
            /* with layer norm the row keeps o (over a) and c_t for layer_norm_output even in inference (its own
             * m = o tanh(c_t) is then replaced) */
            float *cell = job->cells ? job->cells + (row + r) * H : cell_scratch;
            float *state = job->states ? job->states + (row + r) * H : cell_scratch ? cell_scratch + H : NULL;
            float *stats = job->ln_stats ? job->ln_stats + (row + r) * 3 : stats_scratch;
            if (ln) layer_norm_add(G, v_rows + (int64_t)r * G, v.ln_h, v.ln_eps, a_row, &stats[0]);
            if (!standard)
                forward_row_variant(H, v.coupled, v.clip, a_row, job->bias, v.peep,
                                    zoneout_row(v, zc_rate_row, row + r, H), c, cell, state, m, cell != NULL);
            else if (cell) /* two copies of the loop, one per constant `keep` */
                forward_row(H, a_row, job->bias, c, cell, m, 1);
            else
                forward_row(H, a_row, job->bias, c, NULL, m, 0);
            if (ln) layer_norm_output(H, cell, a_row + (G - H), v.ln_c, v.ln_eps, m, &stats[1]);
        }
        if (R_packed) /* h_t = R m_t */
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, P, H, m_rows, H, R_packed, P, 0.0f,
                         job->y + row * P, P);
        if (zones_h(v)) { /* zoneout of h: h_t = h~_t + z (h_{t-1} - h~_t), h_{t-1} the running state */
            float *y = job->y + row * P;
            const float *h_old = job->h + (int64_t)job->r0 * P, *z = v.zh ? v.zh + row * P : NULL;
            for (int64_t k = 0; k < (int64_t)n * P; k++) y[k] += (z ? z[k] : v.zh_rate) * (h_old[k] - y[k]);
        }
        memcpy(job->h + (int64_t)job->r0 * P, job->y + row * P, sizeof(float) * (size_t)n * P);
    }
    free(masked);
    free(v_scratch);
    free(cell_scratch);
    free(zc_rate_row);
    free(m_scratch);
    free(U_packed);
    free(R_packed);
    blas_set_threads_local(previous_threads);
    restore_denormals(saved_mode);
    return NULL;
}

typedef struct {
    int T, H, P, reverse, r0, r1;
    const int64_t *batch_sizes, *offsets;
    const float *U, *R;               /* [GH, P], [P, H] (R NULL without a projection) */
    variant_t variant;
    float *dpeep;                     /* [3H] this thread's peephole gradient sums, or NULL */
    int status;
    const float *gates, *cells, *c0;
    const float *states;              /* [N, H] c_t after zoneout of c (the forward's), or NULL: then cells */
    const float *dy;                  /* [N, P] */
    float *dz;                        /* [N, 4H] out */
    float *dh_out;                    /* [N, P] dL/dh_t of each row (for dR), or NULL without R */
    float *dh, *dc;                   /* [B, P], [B, H]: dh_T/dc_T in, dh0/dc0 out */
    const float *v_hat, *ln_stats;    /* layer norm: the forward's ([N, GH], [N, 3]), or NULL */
    float *dv;                        /* [N, GH] layer norm: dL/d(U h_{t-1}) out (for dU), or NULL */
    float *dln;                       /* [2GH + 2H] layer norm: this thread's sums for ln_h and ln_c, or NULL */
} backward_job;

static void *backward_rows(void *arg) {
    backward_job *job = (backward_job *)arg;
    const variant_t v = job->variant;
    const int standard = is_standard(v);
    const int H = job->H, P = job->P, G = (v.coupled ? 3 : 4) * job->H;
    const int rows = job->r1 - job->r0;
    unsigned int saved_mode = flush_denormals();
    int previous_threads = blas_set_threads_local(1);
    float *U_packed = pack_b(NO_TRANS, rows, P, G, job->U, P);                  /* B = U: 4H x P */
    float *R_packed = job->R ? pack_b(NO_TRANS, rows, H, P, job->R, H) : NULL;  /* B = R: P x H */
    float *dm_scratch = job->R ? (float *)malloc(sizeof(float) * (size_t)rows * H) : NULL;
    /* zoneout of h: dL/dh~_t = (1 - z) dh_t, while z dh_t goes to dh_{t-1} directly; recurrent dropout:
     * U^T dz_t, masked, lands here first */
    const int zone_h = zones_h(v);
    float *dh_scratch = zone_h || v.h_mask ? (float *)malloc(sizeof(float) * (size_t)rows * P) : NULL;
    /* layer norm: four rows of H, a zero dm for the row, and dz_o, zoneout's kept dc and g dn of
     * layer_norm_output_backward */
    const int ln = v.ln_h != NULL;
    float *ln_scratch = ln ? (float *)calloc(4 * (size_t)H, sizeof(float)) : NULL;
    /* with layer norm the row runs without zoneout of c (done around it): the standard row unless it has others */
    const int row_standard = ln ? !v.coupled && v.clip <= 0.0f && !v.peep : standard;
    int no_memory = 0;
    float *zc_rate_row = rate_row_of(v, H, &no_memory);
    if (no_memory || !U_packed || (job->R && (!R_packed || !dm_scratch)) || ((zone_h || v.h_mask) && !dh_scratch)
        || (ln && !ln_scratch)) {
        job->status = -1;
        job->T = 0;
    }
    for (int s = job->T - 1; s >= 0; s--) {
        int t = job->reverse ? job->T - 1 - s : s;
        int n = active_rows(job->batch_sizes, job->r0, job->r1, t);
        if (n == 0) continue;
        int64_t row = job->offsets[t] + job->r0;
        float *dh = job->dh + (int64_t)job->r0 * P;
        const float *dy = job->dy + row * P;
        for (int64_t k = 0; k < (int64_t)n * P; k++) dh[k] += dy[k];
        const float *dh_new = dh; /* dL/dh~_t: the gradient of the step's own output */
        if (zone_h) {
            const float *z = v.zh ? v.zh + row * P : NULL;
            for (int64_t k = 0; k < (int64_t)n * P; k++) {
                float zk = z ? z[k] : v.zh_rate;
                dh_scratch[k] = (1.0f - zk) * dh[k];
                dh[k] *= zk; /* kept for dh_{t-1} */
            }
            dh_new = dh_scratch;
        }
        const float *dm = dh_new;
        if (R_packed) { /* back through h_t = R m_t */
            float *dh_out = job->dh_out + row * P; /* for dR = sum_t dh_t m_t^T, a GEMM in torch: see flush_tiny */
            for (int64_t k = 0; k < (int64_t)n * P; k++) dh_out[k] = flush_tiny(dh_new[k]);
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, H, P, dh_new, P, R_packed, H, 0.0f, dm_scratch, H);
            dm = dm_scratch;
        }
        /* c_{t-1}: the previous processed step's cell, or c0 for rows whose sequence starts here. */
        int t_prev = job->reverse ? t + 1 : t - 1;
        int prev_rows = s > 0 ? active_rows(job->batch_sizes, job->r0, job->r1, t_prev) : 0;
        const float *c_states = job->states ? job->states : job->cells;
        for (int r = 0; r < n; r++) {
            int64_t b = job->r0 + r;
            const float *c_prev = r < prev_rows ? c_states + (job->offsets[t_prev] + b) * H : job->c0 + b * H;
            const float *z = job->gates + (row + r) * G, *cell = job->cells + (row + r) * H;
            const float *zc = zoneout_row(v, zc_rate_row, row + r, H), *dm_row = dm + (int64_t)r * H;
            float *dz = job->dz + (row + r) * G, *dc = job->dc + b * H;
            float *zero_dm = ln_scratch, *dzo = ln_scratch + H, *kept = ln_scratch + 2 * H;
            if (ln) { /* the gradient through m = o tanh(LN(c_t)) first; the row then sees dm = 0 */
                layer_norm_output_backward(H, cell, z + (G - H), v.ln_c, job->ln_stats + (row + r) * 3 + 1,
                                           v.peep ? v.peep + 2 * H : NULL, zc, dm_row, dc, kept, dzo,
                                           ln_scratch + 3 * H, job->dln + 2 * G,
                                           v.peep && job->dpeep ? job->dpeep + 2 * H : NULL);
                dm_row = zero_dm;
                zc = NULL;
            }
            if (row_standard)
                backward_row(H, z, cell, c_prev, dm_row, dc, dz);
            else
                backward_row_variant(H, v.coupled, v.clip, z, cell, c_prev, v.peep, zc, dm_row, dc, dz, job->dpeep);
            if (ln) {
                float *dz_o = dz + (G - H);
                for (int j = 0; j < H; j++) dz_o[j] = flush_tiny(dzo[j]);
                if (zoneout_row(v, zc_rate_row, row + r, H))
                    for (int j = 0; j < H; j++) dc[j] += kept[j];
                layer_norm_backward_row(G, dz, job->v_hat + (row + r) * G, job->ln_stats[(row + r) * 3], v.ln_h,
                                        job->dv + (row + r) * G, job->dln);
            }
        }
        /* dh_{t-1} = U^T dz_t, as rows: dz [n, 4H] @ U [4H, P] (with layer norm dv, the gradient of U h_{t-1});
         * (U^T dz_t) * m under recurrent dropout; plus the z dh_t that zoneout kept in dh */
        const float *dz_rows = ln ? job->dv + row * G : job->dz + row * G;
        if (v.h_mask) {
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, P, G, dz_rows, G, U_packed, P, 0.0f, dh_scratch, P);
            const float *mask = v.h_mask + (int64_t)job->r0 * P;
            if (zone_h)
                for (int64_t k = 0; k < (int64_t)n * P; k++) dh[k] += mask[k] * dh_scratch[k];
            else
                for (int64_t k = 0; k < (int64_t)n * P; k++) dh[k] = mask[k] * dh_scratch[k];
        } else {
            blas_compute(ROW_MAJOR, NO_TRANS, PACKED, n, P, G, dz_rows, G, U_packed, P, zone_h ? 1.0f : 0.0f, dh, P);
        }
    }
    free(dh_scratch);
    free(ln_scratch);
    free(zc_rate_row);
    free(dm_scratch);
    free(U_packed);
    free(R_packed);
    blas_set_threads_local(previous_threads);
    restore_denormals(saved_mode);
    return NULL;
}

#define MAX_THREADS 64

/* Run `work` on each of `jobs` (nthreads of them, job_size bytes each), one per thread. OpenMP, because its
 * threads stay alive between calls: a fresh pthread per call made MKL set itself up again in it, and the
 * second thread's GEMMs took 2.5x as long (measured). Linked as -fopenmp, the library shares the libgomp
 * that torch has loaded (same soname), so these are torch's own worker threads. */
static void run_jobs(void *(*work)(void *), char *jobs, size_t job_size, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int k = 0; k < nthreads; k++) work(jobs + k * job_size);
}

/* splits: nthreads + 1 row boundaries, 0 = splits[0] < ... < splits[nthreads] = B. coupled, clip, peep, h_mask,
 * zh, zh_rate, zc, zc_rate: the variant (variant_t; all 0 / NULL: the standard cell). states: [N, H] c_t after
 * zoneout of c, written in training when zc or zc_rate is set (else NULL). ln_h, ln_c, ln_eps: layer normalisation
 * (NULL: off; both or neither); v_hat [N, GH] and ln_stats [N, 3] its saved rows and statistics (training, else NULL).
 * Returns 0, -1 when memory for the packed weights could not be had, -2 for a bad thread count. */
int lk_forward(int T, int H, int P, int reverse, const int64_t *batch_sizes, const int64_t *offsets,
               int nthreads, const int64_t *splits, const float *U, const float *R, const float *bias,
               int coupled, float clip, const float *peep, const float *h_mask, const float *zh, float zh_rate,
               const float *zc, float zc_rate, const float *ln_h, const float *ln_c, float ln_eps, float *gates,
               float *cells, float *states, float *y, float *h_prev, float *m_out, float *v_hat, float *ln_stats,
               float *h, float *c) {
    if (nthreads < 1 || nthreads > MAX_THREADS) return -2;
    forward_job jobs[MAX_THREADS];
    variant_t variant = {coupled, clip, peep, h_mask, zh, zc, zh_rate, zc_rate, ln_h, ln_c, ln_eps};
    for (int k = 0; k < nthreads; k++)
        jobs[k] = (forward_job){T, H, P, reverse, (int)splits[k], (int)splits[k + 1], batch_sizes, offsets,
                                U, R, bias, variant, 0, gates, cells, states, y, h_prev, m_out, v_hat, ln_stats,
                                h, c};
    run_jobs(forward_rows, (char *)jobs, sizeof(forward_job), nthreads);
    for (int k = 0; k < nthreads; k++)
        if (jobs[k].status) return jobs[k].status;
    return 0;
}

/* dpeep: [nthreads, 3H] zeros in, each thread's peephole gradient sums out (NULL without peepholes); the variant
 * as lk_forward's; states: the forward's (NULL without zoneout of c); with layer normalisation (ln_h, ln_c) v_hat and
 * ln_stats the forward's, dv [N, GH] out, dln [nthreads, 2GH + 2H] zeros in, each thread's sums out (ln_h's gain
 * and bias, then ln_c's). */
int lk_backward(int T, int H, int P, int reverse, const int64_t *batch_sizes, const int64_t *offsets,
                int nthreads, const int64_t *splits, const float *U, const float *R,
                int coupled, float clip, const float *peep, const float *h_mask, const float *zh, float zh_rate,
                const float *zc, float zc_rate, const float *ln_h, const float *ln_c, float *dpeep,
                const float *gates, const float *cells, const float *states, const float *c0, const float *dy,
                const float *v_hat, const float *ln_stats, float *dz, float *dh_out, float *dv, float *dln,
                float *dh, float *dc) {
    if (nthreads < 1 || nthreads > MAX_THREADS) return -2;
    if (peep && !dpeep) return -3; /* the rows sum the peephole gradients into dpeep */
    backward_job jobs[MAX_THREADS];
    variant_t variant = {coupled, clip, peep, h_mask, zh, zc, zh_rate, zc_rate, ln_h, ln_c, 0.0f};
    const int64_t dln_size = 2 * (int64_t)(coupled ? 3 : 4) * H + 2 * (int64_t)H;
    for (int k = 0; k < nthreads; k++)
        jobs[k] = (backward_job){T, H, P, reverse, (int)splits[k], (int)splits[k + 1], batch_sizes, offsets,
                                 U, R, variant, dpeep ? dpeep + (int64_t)k * 3 * H : NULL, 0, gates, cells, c0,
                                 states, dy, dz, dh_out, dh, dc, v_hat, ln_stats, dv,
                                 dln ? dln + k * dln_size : NULL};
    run_jobs(backward_rows, (char *)jobs, sizeof(backward_job), nthreads);
    for (int k = 0; k < nthreads; k++)
        if (jobs[k].status) return jobs[k].status;
    return 0;
}

/* LN(W x_t) of every step at once, before the forward's loop (rows independent: nthreads blocks of rows): z [N, G]
 * in, z^ out over it (the backward's); out [N, G] = gain z^ + bias; inv_sigma [N]. One pass of layer_norm_add per
 * row: torch's own layer_norm backward took 40 ms of a ~390 ms train step (config b, torch.profiler, busy machine). */
void lk_layer_norm_forward(int64_t N, int G, float *z, const float *ln, float eps, float *out, float *inv_sigma,
                           int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int k = 0; k < nthreads; k++) {
        unsigned int saved_mode = flush_denormals();
        for (int64_t r = N * k / nthreads; r < N * (k + 1) / nthreads; r++) {
            memset(out + r * G, 0, sizeof(float) * (size_t)G);
            layer_norm_add(G, z + r * G, ln, eps, out + r * G, inv_sigma + r);
        }
        restore_denormals(saved_mode);
    }
}

/* Its backward: dout [N, G] (the loop's dz) to dz [N, G]; dln [nthreads, 2G] zeros in, each block's sums out. */
void lk_layer_norm_backward(int64_t N, int G, const float *dout, const float *z_hat, const float *inv_sigma,
                            const float *ln, float *dz, float *dln, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int k = 0; k < nthreads; k++) {
        unsigned int saved_mode = flush_denormals();
        for (int64_t r = N * k / nthreads; r < N * (k + 1) / nthreads; r++)
            layer_norm_backward_row(G, dout + r * G, z_hat + r * G, inv_sigma[r], ln, dz + r * G,
                                    dln + (int64_t)k * 2 * G);
        restore_denormals(saved_mode);
    }
}

/* The pointwise functions alone, for the tests' accuracy check. */
void lk_pointwise(int n, const float *x, float *exp_out, float *sigmoid_out, float *tanh_out) {
    for (int k = 0; k < n; k++) {
        exp_out[k] = lk_exp(x[k]);
        sigmoid_out[k] = lk_sigmoid(x[k]);
        tanh_out[k] = lk_tanh(x[k]);
    }
}
