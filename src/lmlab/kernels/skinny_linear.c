/* y = x · Wᵀ + b for a few rows of x: the matrix products of one decoding step.
 *
 * x: (M, K) float32 rows, M = 1..16; W: (N, K) float32, row-major (nn.Linear's layout); b: (N,) or
 * NULL; y: (M, N). At these shapes the product is a stream over W, read once per step; every
 * element of W is used for up to 8 rows while it is in a register, and for the next 8 while it is
 * still in the CPU's cache, so the cost stays close to one pass over memory for any M, where a
 * general GEMM library is built for large M.
 *
 * Each thread takes a contiguous range of W's rows, two at a time, with 2 vector accumulators per
 * row of x, and prefetches the stream ahead of the loads. When x's rows outgrow the first-level
 * cache, k is walked in chunks (the accumulators wait in memory between chunks); with more than
 * 8 rows, W's rows go in blocks that stay in the second-level cache for the second group.
 * skinny_linear_bf16 streams bfloat16 weights (half the bytes), widened to float32 in registers. skinny_linear_int8 does the same over an int8
 * weight with per-row scales and int16 activations, in exact integer arithmetic (the LM-head
 * screen of lmlab/generation/head_screen.py, the int8 draft of speculative decoding). Built by
 * lmlab/kernels/build.py with -O3 -march=native -fopenmp for AVX-512 or AVX2+FMA; nothing is
 * built for other CPUs.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <immintrin.h>
#include <omp.h>

#include "lmlab_kernels.h"

#if defined(__AVX512F__)
typedef __m512 vec;
#define WIDTH 16
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
#define WIDTH 8
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#error "skinny_linear needs AVX-512 or AVX2 with FMA"
#endif

#define PREFETCH_LEAD 128     /* floats: how far past the same k of the next pair the prefetches go */
#define PREFETCH_AHEAD_I8 6144 /* int8 weights: about 6 KB ahead of the row pair being read */
#define X_CHUNK_BYTES 24576  /* x's rows over one chunk of k: half a 48 KB first-level cache */
#define W_BLOCK_BYTES 393216 /* W's rows per block: read again from a 1 MB second-level cache */
#define BLOCK_PAIRS 32
#define GROUP_ROWS 8  /* rows of x per pass over a pair of W rows (its accumulators fill the registers) */
#define MAX_ROWS LMLAB_MAX_ROWS /* float32 and bfloat16 rows per call: up to two groups */
#define MAX_ROWS_I8 LMLAB_MAX_ROWS_INT8

/* bfloat16 is the top half of a float32: widening is a shift, narrowing rounds to nearest even. */
static inline float bf16_to_f32(unsigned short h) {
    union { unsigned int i; float f; } u;
    u.i = (unsigned int)h << 16;
    return u.f;
}

static inline unsigned short f32_to_bf16(float f) {
    union { unsigned int i; float f; } u;
    u.f = f;
    if ((u.i & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  /* NaN stays a (quiet) NaN */
    return (unsigned short)((u.i + 0x7fffu + ((u.i >> 16) & 1u)) >> 16);
}

#if defined(__AVX512F__)
static inline vec vload_bf16(const unsigned short *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
#else
static inline vec vload_bf16(const unsigned short *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#endif

#define F32(p, i) ((p)[i])
#define BF16(p, i) bf16_to_f32((p)[i])

/* Dot product of one W row with one x row, for the remainder and odd rows. */
#define DEFINE_DOT_TAIL(NAME, WTYPE, WGET)                                                       \
static inline float NAME(const WTYPE *w, const float *x, int from, int K) {                      \
    float s = 0.f;                                                                               \
    for (int k = from; k < K; k++) s += WGET(w, k) * x[k];                                       \
    return s;                                                                                    \
}

DEFINE_DOT_TAIL(dot_tail, float, F32)
DEFINE_DOT_TAIL(dot_tail_bf16, unsigned short, BF16)

/* pair_<MM><SUFFIX>: the weight rows n, n + 1 (w0, w1) against the MM rows of x over k in
 * [k_lo, k_hi), for weights (and bias) of type WTYPE, read WIDTH at a time with WLOAD and one at a
 * time with WGET. Each output has its own vector accumulator: it starts at zero (k_lo = 0) or
 * from acc (2·MM vectors, where the previous range left it), and at k_hi = K it is summed into
 * y[m, n] and y[m, n + 1]; otherwise it goes back to acc. So a row's result is the same
 * whichever rows it is computed with, and however k is split. With lead ≥ 0, the next pair's
 * weights are prefetched lead floats ahead of the ones being read. */
#define DEFINE_PAIR(MM, SUFFIX, WTYPE, WLOAD, WGET, TAIL)                                        \
static void pair_##MM##SUFFIX(int N, int K, const float *x, const WTYPE *w0, const WTYPE *b, float *y, int n, \
                              int k_lo, int k_hi, vec *acc, int lead) {                          \
    const WTYPE *w1 = w0 + K, *ahead = w0 + 2 * K + lead;                                        \
    vec a0[MM], a1[MM];                                                                          \
    for (int m = 0; m < MM; m++) {                                                               \
        a0[m] = k_lo ? acc[m] : vzero();                                                         \
        a1[m] = k_lo ? acc[MM + m] : vzero();                                                    \
    }                                                                                            \
    int k = k_lo;                                                                                \
    for (; k + WIDTH <= k_hi; k += WIDTH) {                                                      \
        if (lead >= 0) {                                                                         \
            _mm_prefetch((const char *)(ahead + k), _MM_HINT_T0);                                \
            _mm_prefetch((const char *)(ahead + K + k), _MM_HINT_T0);                            \
        }                                                                                        \
        vec u0 = WLOAD(w0 + k), u1 = WLOAD(w1 + k);                                              \
        for (int m = 0; m < MM; m++) {                                                           \
            vec xv = vload(x + (size_t)m * K + k);                                               \
            a0[m] = vfma(u0, xv, a0[m]);                                                         \
            a1[m] = vfma(u1, xv, a1[m]);                                                         \
        }                                                                                        \
    }                                                                                            \
    if (k_hi < K) {                                                                              \
        for (int m = 0; m < MM; m++) { acc[m] = a0[m]; acc[MM + m] = a1[m]; }                    \
        return;                                                                                  \
    }                                                                                            \
    for (int m = 0; m < MM; m++) {                                                               \
        const float *xm = x + (size_t)m * K;                                                     \
        y[(size_t)m * N + n] = vsum(a0[m]) + TAIL(w0, xm, k, K) + (b ? WGET(b, n) : 0.f);        \
        y[(size_t)m * N + n + 1] = vsum(a1[m]) + TAIL(w1, xm, k, K) + (b ? WGET(b, n + 1) : 0.f); \
    }                                                                                            \
}

#define DEFINE_ALL_PAIRS(SUFFIX, WTYPE, WLOAD, WGET, TAIL)                                       \
    DEFINE_PAIR(1, SUFFIX, WTYPE, WLOAD, WGET, TAIL) DEFINE_PAIR(2, SUFFIX, WTYPE, WLOAD, WGET, TAIL) \
    DEFINE_PAIR(3, SUFFIX, WTYPE, WLOAD, WGET, TAIL) DEFINE_PAIR(4, SUFFIX, WTYPE, WLOAD, WGET, TAIL) \
    DEFINE_PAIR(5, SUFFIX, WTYPE, WLOAD, WGET, TAIL) DEFINE_PAIR(6, SUFFIX, WTYPE, WLOAD, WGET, TAIL) \
    DEFINE_PAIR(7, SUFFIX, WTYPE, WLOAD, WGET, TAIL) DEFINE_PAIR(8, SUFFIX, WTYPE, WLOAD, WGET, TAIL)

DEFINE_ALL_PAIRS(, float, vload, F32, dot_tail)
DEFINE_ALL_PAIRS(_bf16, unsigned short, vload_bf16, BF16, dot_tail_bf16)

typedef void (*pair_fn)(int, int, const float *, const float *, const float *, float *, int, int, int, vec *, int);
static const pair_fn PAIRS[GROUP_ROWS + 1] = {0, pair_1, pair_2, pair_3, pair_4, pair_5, pair_6, pair_7, pair_8};
typedef void (*pair_bf16_fn)(int, int, const float *, const unsigned short *, const unsigned short *, float *, int,
                             int, int, vec *, int);
static const pair_bf16_fn PAIRS_BF16[GROUP_ROWS + 1] = {0, pair_1_bf16, pair_2_bf16, pair_3_bf16, pair_4_bf16,
                                                        pair_5_bf16, pair_6_bf16, pair_7_bf16, pair_8_bf16};

/* How a thread's share of W is walked: blocks of block_rows W rows (even; about W_BLOCK_BYTES of
 * float32, at most 2·BLOCK_PAIRS), and k in chunks of k_chunk (a multiple of WIDTH, or all of K)
 * so that GROUP_ROWS rows of x over one chunk stay in the first-level cache. */
static int k_chunk(int M, int K) {
    int rows = M < GROUP_ROWS ? M : GROUP_ROWS, fits = X_CHUNK_BYTES / (rows * (int)sizeof(float)) / WIDTH * WIDTH;
    return K <= fits ? K : fits;
}

static int block_rows(int K) {
    int rows = W_BLOCK_BYTES / (K * (int)sizeof(float)) & ~1;
    return rows < 2 ? 2 : (rows > 2 * BLOCK_PAIRS ? 2 * BLOCK_PAIRS : rows);
}

/* rows<SUFFIX>: y (M, N) over the weight rows [n_lo, n_hi). Within a block, each chunk of k goes
 * through the pairs for the first GROUP_ROWS rows of x (the block comes from memory, prefetched
 * ahead), then for the next rows (the block is still in the CPU's cache): W is read from memory
 * once for all MAX_ROWS rows. */
#define DEFINE_ROWS(SUFFIX, WTYPE, WGET, TAIL, TABLE)                                            \
static void rows##SUFFIX(int M, int N, int K, const float *x, const WTYPE *W, const WTYPE *b, float *y, \
                         int n_lo, int n_hi) {                                                   \
    vec acc[BLOCK_PAIRS * (MAX_ROWS / GROUP_ROWS) * 2 * GROUP_ROWS];                             \
    int chunk = k_chunk(M, K), block = block_rows(K), pairs_end = n_lo + ((n_hi - n_lo) & ~1);   \
    for (int n0 = n_lo; n0 < pairs_end; n0 += block) {                                           \
        int n1 = n0 + block < pairs_end ? n0 + block : pairs_end;                                \
        for (int k0 = 0; k0 < K; k0 += chunk) {                                                  \
            int k1 = k0 + chunk < K ? k0 + chunk : K;                                            \
            for (int m = 0; m < M; m += GROUP_ROWS) {                                            \
                int rows_here = M - m < GROUP_ROWS ? M - m : GROUP_ROWS;                         \
                for (int n = n0; n < n1; n += 2)                                                 \
                    TABLE[rows_here](N, K, x + (size_t)m * K, W + (size_t)n * K, b, y + (size_t)m * N, n, k0, k1, \
                                     acc + ((size_t)((n - n0) / 2) * (MAX_ROWS / GROUP_ROWS) + m / GROUP_ROWS) * 2 * GROUP_ROWS, \
                                     m == 0 ? PREFETCH_LEAD : -1);                               \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    for (int n = pairs_end; n < n_hi; n++)                                                       \
        for (int m = 0; m < M; m++)                                                              \
            y[(size_t)m * N + n] = TAIL(W + (size_t)n * K, x + (size_t)m * K, 0, K) + (b ? WGET(b, n) : 0.f); \
}

DEFINE_ROWS(, float, F32, dot_tail, PAIRS)
DEFINE_ROWS(_bf16, unsigned short, BF16, dot_tail_bf16, PAIRS_BF16)

/* The int8 product: Q (N, K) int8 with one float32 scale per row, x given as int16 rows xq with
 * one scale per row. The products and their sums are exact int32 (vpmaddwd): the caller bounds
 * |xq| so that K · 127 · max|xq| < 2³¹. Then y = sum · xscale[m] · scale[n] in float32. */
#if defined(__AVX512BW__)
typedef __m512i ivec;
#define IWIDTH 32
#define izero() _mm512_setzero_si512()
static inline ivec iload_w(const signed char *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
static inline ivec iload_x(const short *p) { return _mm512_loadu_si512((const void *)p); }
static inline ivec imadd(ivec acc, ivec w, ivec x) { return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x)); }
static inline int isum(ivec v) { return _mm512_reduce_add_epi32(v); }
#else
typedef __m256i ivec;
#define IWIDTH 16
#define izero() _mm256_setzero_si256()
static inline ivec iload_w(const signed char *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline ivec iload_x(const short *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline ivec imadd(ivec acc, ivec w, ivec x) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x)); }
static inline int isum(ivec v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}
#endif

static inline int idot_tail(const signed char *q, const short *x, int from, int K) {
    int s = 0;
    for (int k = from; k < K; k++) s += (int)q[k] * (int)x[k];
    return s;
}

#define DEFINE_ROWS_I8(MM)                                                                       \
static void rows_i8_##MM(int N, int K, const short *x, const float *xscale, const signed char *Q, \
                         const float *scale, float *y, int n_lo, int n_hi) {                     \
    int n = n_lo;                                                                                \
    for (; n + 2 <= n_hi; n += 2) {                                                              \
        const signed char *q0 = Q + (size_t)n * K, *q1 = q0 + K;                                 \
        ivec a0[MM], a1[MM];                                                                     \
        for (int m = 0; m < MM; m++) { a0[m] = izero(); a1[m] = izero(); }                       \
        int k = 0;                                                                               \
        for (; k + IWIDTH <= K; k += IWIDTH) {                                                   \
            _mm_prefetch((const char *)(q1 + k + PREFETCH_AHEAD_I8), _MM_HINT_T0);              \
            ivec u0 = iload_w(q0 + k), u1 = iload_w(q1 + k);                                     \
            for (int m = 0; m < MM; m++) {                                                       \
                ivec xv = iload_x(x + (size_t)m * K + k);                                        \
                a0[m] = imadd(a0[m], u0, xv);                                                    \
                a1[m] = imadd(a1[m], u1, xv);                                                    \
            }                                                                                    \
        }                                                                                        \
        for (int m = 0; m < MM; m++) {                                                           \
            const short *xm = x + (size_t)m * K;                                                 \
            y[(size_t)m * N + n] = (float)(isum(a0[m]) + idot_tail(q0, xm, k, K)) * xscale[m] * scale[n]; \
            y[(size_t)m * N + n + 1] = (float)(isum(a1[m]) + idot_tail(q1, xm, k, K)) * xscale[m] * scale[n + 1]; \
        }                                                                                        \
    }                                                                                            \
    for (; n < n_hi; n++)                                                                        \
        for (int m = 0; m < MM; m++)                                                             \
            y[(size_t)m * N + n] = (float)idot_tail(Q + (size_t)n * K, x + (size_t)m * K, 0, K) * xscale[m] * scale[n]; \
}

DEFINE_ROWS_I8(1) DEFINE_ROWS_I8(2) DEFINE_ROWS_I8(3) DEFINE_ROWS_I8(4)
DEFINE_ROWS_I8(5) DEFINE_ROWS_I8(6) DEFINE_ROWS_I8(7) DEFINE_ROWS_I8(8)

typedef void (*rows_i8_fn)(int, int, const short *, const float *, const signed char *, const float *, float *, int, int);
static const rows_i8_fn ROWS_I8[MAX_ROWS_I8 + 1] = {0, rows_i8_1, rows_i8_2, rows_i8_3, rows_i8_4,
                                                 rows_i8_5, rows_i8_6, rows_i8_7, rows_i8_8};

/* Thread t of T gets an even share of the N rows (rows go in pairs): [*lo, *hi). */
static inline void share(int N, int *lo, int *hi) {
    int threads = omp_get_num_threads(), t = omp_get_thread_num();
    int per = (((N + threads - 1) / threads) + 1) & ~1;
    *lo = t * per;
    *hi = *lo + per < N ? *lo + per : N;
}

/* The entry point: 0 on success, -1 when M is out of range. */
int skinny_linear(int M, int N, int K, const float *x, const float *W, const float *b, float *y) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 1) return -1;
    #pragma omp parallel if ((size_t)N * K >= 65536)
    {
        int lo, hi;
        share(N, &lo, &hi);
        if (lo < hi) rows(M, N, K, x, W, b, y, lo, hi);
    }
    return 0;
}

/* y = (xq · Qᵀ) · xscale ⊗ scale for int16 xq (M, K) and int8 Q (N, K): 0 on success, -1 when M
 * is out of range. */
int skinny_linear_int8(int M, int N, int K, const short *xq, const float *xscale, const signed char *Q,
                       const float *scale, float *y) {
    if (M < 1 || M > MAX_ROWS_I8 || N < 1 || K < 1) return -1;
    rows_i8_fn rows = ROWS_I8[M];
    #pragma omp parallel if ((size_t)N * K >= 262144)
    {
        int lo, hi;
        share(N, &lo, &hi);
        if (lo < hi) rows(N, K, xq, xscale, Q, scale, y, lo, hi);
    }
    return 0;
}

/* The same for float32 rows x (M, K): each row is rounded to int16 first (one scale per row, the
 * largest |value| that keeps the sums in int32), which is how an int8 draft model runs. */
int skinny_linear_int8_f32(int M, int N, int K, const float *x, const signed char *Q, const float *scale, float *y) {
    if (M < 1 || M > MAX_ROWS_I8 || N < 1 || K < 1) return -1;
    long long limit = (2147483647LL / (127LL * K));
    int max_abs = limit < 32767 ? (int)limit : 32767;
    short *xq = (short *)malloc(sizeof(short) * (size_t)M * K);
    float xscale[MAX_ROWS_I8];
    if (!xq) return -2;
    for (int m = 0; m < M; m++) {
        const float *row = x + (size_t)m * K;
        float amax = 0.f;
        for (int k = 0; k < K; k++) amax = fmaxf(amax, fabsf(row[k]));
        xscale[m] = amax > 0.f ? amax / max_abs : 1.f;
        float inv = 1.f / xscale[m];
        for (int k = 0; k < K; k++) {
            float v = nearbyintf(row[k] * inv);
            xq[(size_t)m * K + k] = (short)(v > max_abs ? max_abs : (v < -max_abs ? -max_abs : v));
        }
    }
    int done = skinny_linear_int8(M, N, K, xq, xscale, Q, scale, y);
    free(xq);
    return done;
}

/* The same for a bfloat16 layer: x (M, K), W (N, K), b (N,) or NULL and y (M, N) in bfloat16;
 * the products and sums in float32, y rounded once at the end (as PyTorch's bfloat16 GEMM). */
int skinny_linear_bf16(int M, int N, int K, const unsigned short *x, const unsigned short *W, const unsigned short *b,
                       unsigned short *y) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 1) return -1;
    float *xf = (float *)malloc(sizeof(float) * ((size_t)M * K + (size_t)M * N));
    if (!xf) return -2;
    float *yf = xf + (size_t)M * K;
    for (size_t i = 0; i < (size_t)M * K; i++) xf[i] = bf16_to_f32(x[i]);
    #pragma omp parallel if ((size_t)N * K >= 131072)
    {
        int lo, hi;
        share(N, &lo, &hi);
        if (lo < hi) rows_bf16(M, N, K, xf, W, b, yf, lo, hi);
    }
    for (size_t i = 0; i < (size_t)M * N; i++) y[i] = f32_to_bf16(yf[i]);
    free(xf);
    return 0;
}
