/* The k best log-probabilities of each row of logits, plus a per-row offset: one step of beam
 * search (each beam's log-softmax over the vocabulary, added to the beam's score).
 *
 * logits: (R, V) float32 contiguous; offset: (R,) or NULL; values: (R, k) out, each row's k largest
 * log_softmax(logits[r]) + offset[r], best first; indices: (R, k) int64 out, their columns (ties:
 * the lower column first). The log-softmax is x − max − log Σ exp(x − max), as PyTorch computes
 * it; the selection runs on the logits themselves, which order the same way. One pass finds the
 * maximum, one sums the exponentials, one keeps the k best — where a full log-softmax would also
 * write and reread all R·V of them. Built with the other kernels by lmlab/kernels/build.py.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <omp.h>

#include "exp_nonpositive.h"

static float row_max(const float *x, int V) {
    float best = -INFINITY;
    #pragma omp simd reduction(max:best)
    for (int v = 0; v < V; v++) best = x[v] > best ? x[v] : best;
    return best;
}

/* Σ exp(x − max): float32 vector sums over blocks of 512, the blocks added in double, so that the
 * rounding error does not grow with the vocabulary. */
static double row_exp_sum(const float *x, int V, float max) {
    enum { BLOCK = 512 };
    double total = 0.0;
    for (int start = 0; start < V; start += BLOCK) {
        int end = start + BLOCK < V ? start + BLOCK : V;
        float block = 0.f;
        #pragma omp simd reduction(+:block)
        for (int v = start; v < end; v++) block += exp_nonpositive(x[v] - max);
        total += block;
    }
    return total;
}

/* Insert x[v] into the best-first list vals/cols of *n ≤ k entries, if it belongs there. */
static inline void offer(const float *x, int v, int k, int *n, float *vals, int64_t *cols) {
    float xv = x[v];
    if (*n == k && !(xv > vals[k - 1])) return;
    int at = *n < k ? (*n)++ : k - 1;
    for (; at > 0 && xv > vals[at - 1]; at--) {
        vals[at] = vals[at - 1];
        cols[at] = cols[at - 1];
    }
    vals[at] = xv;
    cols[at] = v;
}

/* The k largest of x (V ≥ k) into vals/cols, best first. Blocks whose maximum cannot enter the
 * list (nearly all, once it is full) are passed over after one vector maximum. */
static void row_topk(const float *x, int V, int k, float *vals, int64_t *cols) {
    enum { BLOCK = 16 };
    int n = 0, v = 0;
    for (; v + BLOCK <= V; v += BLOCK) {
        float block_max = row_max(x + v, BLOCK);
        if (n == k && !(block_max > vals[k - 1])) continue;
        for (int j = v; j < v + BLOCK; j++) offer(x, j, k, &n, vals, cols);
    }
    for (; v < V; v++) offer(x, v, k, &n, vals, cols);
}

/* The entry point: 0 on success, -1 for shapes it does not take. */
int log_softmax_topk(int R, int V, int k, const float *logits, const float *offset, float *values, int64_t *indices) {
    if (R < 1 || V < 1 || k < 1 || k > V) return -1;
    #pragma omp parallel for schedule(static) if ((size_t)R * V >= 65536)
    for (int r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        float *vals = values + (size_t)r * k;
        int64_t *cols = indices + (size_t)r * k;
        float max = row_max(x, V);
        float log_sum = (float)log(row_exp_sum(x, V, max));
        row_topk(x, V, k, vals, cols);
        for (int j = 0; j < k; j++) vals[j] = (vals[j] - max - log_sum) + (offset ? offset[r] : 0.f);
    }
    return 0;
}
