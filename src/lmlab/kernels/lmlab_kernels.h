/* What the kernel files share: the entry points one calls in another (decode_block.c runs the
 * others), and the strided view of attention heads. */
#ifndef LMLAB_KERNELS_H
#define LMLAB_KERNELS_H

/* A (B, heads, T, D) float32 view: element (b, h, t, d) is data[b·b_stride + h·h_stride + t·t_stride + d]. */
typedef struct {
    const float *data;
    long b, h, t;
} heads;

/* See decode_attention.c: 0 on success, -1 for shapes it does not take, -2 when out of memory. */
int decode_attention(int B, int H, int Hkv, int T, int D, int S_max, int start, heads q, heads k, heads v,
                     float *keys, float *values, const int *rows, const unsigned char *allowed, long a_b, long a_t,
                     float *out);

#define LMLAB_MAX_ROWS 16     /* float32 rows of one skinny_linear call (BLOCK_ROWS in build.py) */
#define LMLAB_MAX_ROWS_INT8 8 /* rows of one int8 call (MAX_ROWS in build.py) */

/* See skinny_linear.c: y (M, N) = x (M, K) · Wᵀ + b for 1 ≤ M ≤ LMLAB_MAX_ROWS; 0 on success. */
int skinny_linear(int M, int N, int K, const float *x, const float *W, const float *b, float *y);

/* See skinny_linear.c: y (M, N) = x · (Q · diag(scale))ᵀ for int8 Q (N, K), x rounded to int16 per row,
 * 1 ≤ M ≤ LMLAB_MAX_ROWS_INT8. */
int skinny_linear_int8_f32(int M, int N, int K, const float *x, const signed char *Q, const float *scale, float *y);

#endif
