/* One pre-norm Transformer block for the few new tokens of a decoding step, in a single call:
 *
 *     x += out_proj(attention(qkv(norm1(x))))      (RoPE on q and k if given; the new keys and
 *                                                    values go into the cache)
 *     x += down(act(up(norm2(x))))                  or down(act(gate(h)) * up(h)) when gated
 *
 * A decoding step is a long chain of small operations; run one by one from Python each costs more
 * in dispatch than in arithmetic. Here the matrix products are skinny_linear (or its int8 form, for
 * an int8 draft of the model), the attention is decode_attention, and the norms and activations
 * are plain loops, all on scratch memory.
 *
 * x: (M, C) float32, M = B·T ≤ LMLAB_MAX_ROWS rows (LMLAB_MAX_ROWS_INT8 with int8 weights) (row b·T + t is token t of sequence b), updated in place.
 * The cache arguments are decode_attention's. cos, sin: NULL, or RoPE's tables for these tokens,
 * r values per token at cos + b·c_b + t·c_t ("rotate half" over each head's first r dimensions). Built with the other kernels by
 * lmlab/kernels/build.py.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "exp_nonpositive.h"
#include "lmlab_kernels.h"

enum { LAYER_NORM = 0, RMS_NORM = 1 };
enum { RELU = 0, GELU = 1, GELU_TANH = 2, SILU = 3 };

/* The block's shapes and weights (biases and the gate may be NULL), as lmlab/kernels/block.py fills them. */
typedef struct {
    int C, H, Hkv, D, F;  /* width, query heads, key/value heads, head size, feed-forward width */
    int norm, activation, gated;
    float eps;
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;
    const float *qkv_w, *qkv_b, *out_w, *out_b;
    const float *up_w, *up_b, *gate_w, *gate_b, *down_w, *down_b;
    /* int8 copies of the five projections with per-row scales (an int8 draft), or all NULL */
    const signed char *qkv_q, *out_q, *up_q, *gate_q, *down_q;
    const float *qkv_s, *out_s, *up_s, *gate_s, *down_s;
} block;

/* y (M, N) = x · Wᵀ + b with the float32 weight W, or with the int8 weight Q and its scales S
 * when Q is given. */
static int project(int M, int N, int K, const float *x, const float *W, const float *b, const signed char *Q,
                   const float *S, float *y) {
    if (!Q) return skinny_linear(M, N, K, x, W, b, y);
    int done = skinny_linear_int8_f32(M, N, K, x, Q, S, y);
    if (!done && b)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(size_t)m * N + n] += b[n];
    return done;
}

/* y = norm(x) over rows of C, the statistics accumulated in double. */
static void normalise(const block *p, const float *w, const float *b, const float *x, float *y, int M) {
    int C = p->C;
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * C;
        float *out = y + (size_t)m * C;
        double sum = 0.0, squares = 0.0;
        for (int c = 0; c < C; c++) {
            sum += row[c];
            squares += (double)row[c] * row[c];
        }
        float mean = p->norm == LAYER_NORM ? (float)(sum / C) : 0.f;
        double spread = p->norm == LAYER_NORM ? squares / C - (sum / C) * (sum / C) : squares / C;
        float scale = (float)(1.0 / sqrt((spread > 0.0 ? spread : 0.0) + p->eps));
        for (int c = 0; c < C; c++) out[c] = (row[c] - mean) * scale * w[c] + (b ? b[c] : 0.f);
    }
}

/* erf(z), from erfc(|z|) = t·exp(−z² − 1.26551223 + t·P(t)), t = 1/(1 + |z|/2) (Numerical Recipes,
 * fractional error below 1.2e-7). */
static inline float erf_approx(float z) {
    float a = fabsf(z), t = 1.f / (1.f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    float erfc_a = t * exp_nonpositive(-a * a - 1.26551223f + t * p);
    return z < 0.f ? erfc_a - 1.f : 1.f - erfc_a;
}

static inline float tanh_approx(float u) {
    float e = exp_nonpositive(-2.f * fabsf(u)), magnitude = (1.f - e) / (1.f + e);
    return u < 0.f ? -magnitude : magnitude;
}

/* u = act(u), or act(g) · u when gated, over n values: one vectorised loop per activation. */
#define ACTIVATE(expression)                              \
    _Pragma("omp simd")                                   \
    for (size_t i = 0; i < n; i++) {                      \
        float x = a[i], y = (expression);                 \
        u[i] = g ? y * u[i] : y;                          \
    }

static inline float silu(float x) {  /* x·σ(x), σ from e^(−|x|) so that the exponent is never positive */
    float e = exp_nonpositive(-fabsf(x));
    return x * (x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e));
}

static void activate(int activation, float *u, const float *g, size_t n) {
    const float *a = g ? g : u;
    switch (activation) {
    case RELU: ACTIVATE(x > 0.f ? x : 0.f) break;
    case GELU: ACTIVATE(0.5f * x * (1.f + erf_approx(x * 0.70710678f))) break;
    case GELU_TANH: ACTIVATE(0.5f * x * (1.f + tanh_approx(0.79788456f * (x + 0.044715f * x * x * x)))) break;
    default: ACTIVATE(silu(x)) break;
    }
}

/* RoPE on the n heads (D apart) of one token: dimension i < r/2 pairs with i + r/2, as PyTorch's
 * x·cos + rotate_half(x)·sin; dimensions past r stay. */
static void rotate(float *x, int n, int D, int r, const float *cos, const float *sin) {
    int half = r / 2;
    for (int h = 0; h < n; h++) {
        float *v = x + (size_t)h * D;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] + -b * sin[i];
            v[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/* RoPE on every query and key head of the M = B·T rows of a fused q|k|v projection. */
static void rotate_rows(const block *p, float *qkv, int B, int T, const float *cos, const float *sin, long c_b, long c_t, int r) {
    int QKV = (p->H + 2 * p->Hkv) * p->D;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *row = qkv + ((size_t)b * T + t) * QKV;
            const float *c = cos + b * c_b + t * c_t, *s = sin + b * c_b + t * c_t;
            rotate(row, p->H + p->Hkv, p->D, r, c, s);  /* the query heads, then the key heads after them */
        }
}

static inline void add_rows(float *x, const float *y, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* The entry point: 0 on success, -1 for shapes it does not take, -2 when out of memory. */
int decode_block(const block *p, int B, int T, int start, float *keys, float *values, int S_max, const int *rows,
                 const unsigned char *allowed, long a_b, long a_t, const float *cos, const float *sin, long c_b, long c_t,
                 int r, float *x) {
    int M = B * T, C = p->C, D = p->D, QKV = (p->H + 2 * p->Hkv) * D;
    if (M < 1 || M > (p->qkv_q ? LMLAB_MAX_ROWS_INT8 : LMLAB_MAX_ROWS) || p->H % p->Hkv || (cos && (r < 2 || r > D || r % 2))) return -1;
    size_t per_row = (size_t)C + QKV + (size_t)p->H * D + C + (size_t)p->F * (p->gated ? 2 : 1);
    float *scratch = (float *)malloc(sizeof(float) * per_row * M);
    if (!scratch) return -2;
    float *h = scratch, *qkv = h + (size_t)M * C, *att = qkv + (size_t)M * QKV;
    float *o = att + (size_t)M * p->H * D, *u = o + (size_t)M * C, *g = p->gated ? u + (size_t)M * p->F : NULL;

    normalise(p, p->norm1_w, p->norm1_b, x, h, M);
    int done = project(M, QKV, C, h, p->qkv_w, p->qkv_b, p->qkv_q, p->qkv_s, qkv);
    if (!done && cos) rotate_rows(p, qkv, B, T, cos, sin, c_b, c_t, r);
    heads q = {qkv, (long)T * QKV, D, QKV};
    heads k = {qkv + (size_t)p->H * D, (long)T * QKV, D, QKV};
    heads v = {qkv + (size_t)(p->H + p->Hkv) * D, (long)T * QKV, D, QKV};
    if (!done) done = decode_attention(B, p->H, p->Hkv, T, D, S_max, start, q, k, v, keys, values, rows, allowed, a_b, a_t, att);
    if (!done) done = project(M, C, p->H * D, att, p->out_w, p->out_b, p->out_q, p->out_s, o);
    if (!done) {
        add_rows(x, o, (size_t)M * C);
        normalise(p, p->norm2_w, p->norm2_b, x, h, M);
        done = project(M, p->F, C, h, p->up_w, p->up_b, p->up_q, p->up_s, u);
    }
    if (!done && g) done = project(M, p->F, C, h, p->gate_w, p->gate_b, p->gate_q, p->gate_s, g);
    if (!done) {
        activate(p->activation, u, g, (size_t)M * p->F);
        done = project(M, C, p->F, u, p->down_w, p->down_b, p->down_q, p->down_s, o);
    }
    if (!done) add_rows(x, o, (size_t)M * C);
    free(scratch);
    return done;
}
