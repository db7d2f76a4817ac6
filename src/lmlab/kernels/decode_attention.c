/* Attention of a few new queries over a KV cache: the attention of one decoding step.
 *
 * The new tokens are the positions [start, start + T) of B rows. q: their queries (B, H, T, D);
 * k, v: their keys and values (B, H_kv, T, D), written into the cache first. Each is float32 with
 * strides (b, h, t) and unit stride over D, so the heads can be read straight out of a fused
 * projection. keys, values: the cache buffers (B, H_kv, S_max, D), contiguous; query head h reads
 * key/value head h / (H / H_kv) (grouped-query attention).
 *
 * rows: (B, S_max) int32 or NULL. Beam search reorders its rows every step; instead of moving
 * cached keys between rows, the cache records for each (row, position) which buffer row holds
 * them: rows[b][s]. NULL means every row holds its own. New keys go to the row's own buffer row.
 *
 * allowed: (B|1, T, start + T) bytes with strides (a_b, a_t) and unit stride over positions,
 * nonzero where a query may attend — or NULL for plain causal attention, where query t sees the
 * positions ≤ start + t. A query that may see no key gets zeros (as scaled_dot_product_attention
 * does with a boolean mask).
 *
 * out: (B, T, H, D) contiguous — the layout the output projection reads. Scores are scaled by
 * 1/√D and go through a max-subtracted softmax in float32. Built with the other kernels by
 * lmlab/kernels/build.py.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "lmlab_kernels.h"
#include "exp_nonpositive.h"

#define STACK_SCORES 2048

static inline float dot(const float *a, const float *b, int D) {
    float s = 0.f;
    #pragma omp simd reduction(+:s)
    for (int d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

static inline void add_scaled(float *acc, const float *v, float w, int D) {
    #pragma omp simd
    for (int d = 0; d < D; d++) acc[d] += w * v[d];
}

static inline const float *head(heads x, int b, int h, int t) { return x.data + b * x.b + h * x.h + t * x.t; }

typedef struct {
    int B, H, Hkv, T, D, S_max, start;
    heads q;
    const float *keys, *values;
    const int *rows;
    const unsigned char *allowed;
    long a_b, a_t;
    float *out;
} problem;

/* Where (row b, position s)'s key/value vector of head hk lies in a cache buffer. */
static inline size_t slot(const problem *p, int b, int hk, int s) {
    int r = p->rows ? p->rows[(size_t)b * p->S_max + s] : b;
    return (((size_t)r * p->Hkv + hk) * p->S_max + s) * p->D;
}

/* One query (row b, head h, query t); scores: scratch for start + T floats. */
static void attend_one(const problem *p, int b, int h, int t, float *scores) {
    int D = p->D, hk = h / (p->H / p->Hkv);
    int n = p->allowed ? p->start + p->T : p->start + t + 1;  /* candidate positions 0..n-1 */
    const float *q = head(p->q, b, h, t);
    const unsigned char *ok = p->allowed ? p->allowed + b * p->a_b + t * p->a_t : NULL;
    float *o = p->out + (((size_t)b * p->T + t) * p->H + h) * D;
    float scale = 1.f / sqrtf((float)D), best = -INFINITY;
    for (int s = 0; s < n; s++) {
        scores[s] = (ok && !ok[s]) ? -INFINITY : dot(q, p->keys + slot(p, b, hk, s), D) * scale;
        if (scores[s] > best) best = scores[s];
    }
    memset(o, 0, sizeof(float) * D);
    if (best == -INFINITY) return;  /* no key allowed */
    float total = 0.f;
    #pragma omp simd reduction(+:total)
    for (int s = 0; s < n; s++) {
        scores[s] = exp_nonpositive(scores[s] - best);  /* forbidden positions: 0 */
        total += scores[s];
    }
    for (int s = 0; s < n; s++)
        if (scores[s] != 0.f) add_scaled(o, p->values + slot(p, b, hk, s), scores[s], D);
    float inv = 1.f / total;
    #pragma omp simd
    for (int d = 0; d < D; d++) o[d] *= inv;
}

/* The new keys and values into each row's own buffer row, positions [start, start + T). */
static void write_cache(int B, int Hkv, int T, int D, int S_max, int start, heads k, heads v, float *keys, float *values) {
    for (int b = 0; b < B; b++)
        for (int hk = 0; hk < Hkv; hk++)
            for (int t = 0; t < T; t++) {
                size_t at = (((size_t)b * Hkv + hk) * S_max + start + t) * D;
                memcpy(keys + at, head(k, b, hk, t), sizeof(float) * D);
                memcpy(values + at, head(v, b, hk, t), sizeof(float) * D);
            }
}

int decode_attention(int B, int H, int Hkv, int T, int D, int S_max, int start, heads q, heads k, heads v,
                     float *keys, float *values, const int *rows, const unsigned char *allowed, long a_b, long a_t,
                     float *out) {
    if (B < 1 || H < 1 || Hkv < 1 || H % Hkv || T < 1 || D < 1 || start < 0 || start + T > S_max) return -1;
    write_cache(B, Hkv, T, D, S_max, start, k, v, keys, values);
    problem p = {B, H, Hkv, T, D, S_max, start, q, keys, values, rows, allowed, a_b, a_t, out};
    int tasks = B * H * T, n_max = start + T, failed = 0;
    size_t work = (size_t)tasks * n_max * D;
    #pragma omp parallel if (work >= 32768)
    {
        float stack[STACK_SCORES];
        float *scores = n_max <= STACK_SCORES ? stack : (float *)malloc(sizeof(float) * n_max);
        if (!scores) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int i = 0; i < tasks; i++) {
            if (scores) attend_one(&p, i / (H * T), (i / T) % H, i % T, scores);
        }
        if (scores != stack) free(scores);
    }
    return failed ? -2 : 0;
}
