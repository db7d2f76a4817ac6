/* y = x · Wᵀ + b for a few rows of x: the matrix products of one decoding step.
 *
 * x: (M, K) float32 rows, M = 1..8; W: (N, K) float32, row-major (nn.Linear's layout); b: (N,) or
 * NULL; y: (M, N). At these shapes the product is a stream over W, read once per step; every
 * element of W is used for all M rows while it is in a register, so the cost stays close to one
 * pass over memory for any M, where a general GEMM library is built for large M.
 *
 * Each thread takes a contiguous range of W's rows, two at a time, with M × 2 vector accumulators,
 * and prefetches the stream ahead of the loads. skinny_linear_int8 does the same over an int8
 * weight with per-row scales (the LM-head screen of lmlab/generation/head_screen.py). Built by lmlab/kernels/__init__.py with
 * -O3 -march=native -fopenmp for AVX-512 or AVX2+FMA; nothing is built for other CPUs.
 */
#include <stddef.h>
#include <immintrin.h>
#include <omp.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define WIDTH 16
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
static inline vec vload_i8(const signed char *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
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
static inline vec vload_i8(const signed char *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
#else
#error "skinny_linear needs AVX-512 or AVX2 with FMA"
#endif

#define PREFETCH_AHEAD 1536 /* floats: about 6 KB ahead of the row pair being read */
#define MAX_ROWS 8

/* Dot product of one W row with one x row, for the remainder and odd rows. */
static inline float dot_tail(const float *w, const float *x, int from, int K) {
    float s = 0.f;
    for (int k = from; k < K; k++) s += w[k] * x[k];
    return s;
}

#define DEFINE_ROWS(MM)                                                                          \
static void rows_##MM(int N, int K, const float *x, const float *W, const float *b, float *y,  \
                      int n_lo, int n_hi) {                                                      \
    int n = n_lo;                                                                                \
    for (; n + 2 <= n_hi; n += 2) {                                                              \
        const float *w0 = W + (size_t)n * K, *w1 = w0 + K;                                       \
        vec a0[MM], a1[MM];                                                                      \
        for (int m = 0; m < MM; m++) { a0[m] = vzero(); a1[m] = vzero(); }                       \
        int k = 0;                                                                               \
        for (; k + WIDTH <= K; k += WIDTH) {                                                     \
            _mm_prefetch((const char *)(w1 + k + PREFETCH_AHEAD), _MM_HINT_T0);                  \
            _mm_prefetch((const char *)(w1 + K + k + PREFETCH_AHEAD), _MM_HINT_T0);              \
            vec u0 = vload(w0 + k), u1 = vload(w1 + k);                                          \
            for (int m = 0; m < MM; m++) {                                                       \
                vec xv = vload(x + (size_t)m * K + k);                                           \
                a0[m] = vfma(u0, xv, a0[m]);                                                     \
                a1[m] = vfma(u1, xv, a1[m]);                                                     \
            }                                                                                    \
        }                                                                                        \
        for (int m = 0; m < MM; m++) {                                                           \
            const float *xm = x + (size_t)m * K;                                                 \
            y[(size_t)m * N + n] = vsum(a0[m]) + dot_tail(w0, xm, k, K) + (b ? b[n] : 0.f);      \
            y[(size_t)m * N + n + 1] = vsum(a1[m]) + dot_tail(w1, xm, k, K) + (b ? b[n + 1] : 0.f); \
        }                                                                                        \
    }                                                                                            \
    for (; n < n_hi; n++)                                                                        \
        for (int m = 0; m < MM; m++)                                                             \
            y[(size_t)m * N + n] = dot_tail(W + (size_t)n * K, x + (size_t)m * K, 0, K) + (b ? b[n] : 0.f); \
}

DEFINE_ROWS(1) DEFINE_ROWS(2) DEFINE_ROWS(3) DEFINE_ROWS(4)
DEFINE_ROWS(5) DEFINE_ROWS(6) DEFINE_ROWS(7) DEFINE_ROWS(8)

typedef void (*rows_fn)(int, int, const float *, const float *, const float *, float *, int, int);
static const rows_fn ROWS[MAX_ROWS + 1] = {0, rows_1, rows_2, rows_3, rows_4, rows_5, rows_6, rows_7, rows_8};

/* The same product with an int8 weight Q (N, K) and one float32 scale per row: y = (x · Qᵀ) ⊙ s.
 * The products and sums are float32, as in the float kernel; only the weight is int8. */
static inline float dot_tail_i8(const signed char *q, const float *x, int from, int K) {
    float s = 0.f;
    for (int k = from; k < K; k++) s += (float)q[k] * x[k];
    return s;
}

#define DEFINE_ROWS_I8(MM)                                                                       \
static void rows_i8_##MM(int N, int K, const float *x, const signed char *Q, const float *scale, \
                         float *y, int n_lo, int n_hi) {                                         \
    int n = n_lo;                                                                                \
    for (; n + 2 <= n_hi; n += 2) {                                                              \
        const signed char *q0 = Q + (size_t)n * K, *q1 = q0 + K;                                 \
        vec a0[MM], a1[MM];                                                                      \
        for (int m = 0; m < MM; m++) { a0[m] = vzero(); a1[m] = vzero(); }                       \
        int k = 0;                                                                               \
        for (; k + WIDTH <= K; k += WIDTH) {                                                     \
            _mm_prefetch((const char *)(q1 + k + 4 * PREFETCH_AHEAD), _MM_HINT_T0);              \
            vec u0 = vload_i8(q0 + k), u1 = vload_i8(q1 + k);                                    \
            for (int m = 0; m < MM; m++) {                                                       \
                vec xv = vload(x + (size_t)m * K + k);                                           \
                a0[m] = vfma(u0, xv, a0[m]);                                                     \
                a1[m] = vfma(u1, xv, a1[m]);                                                     \
            }                                                                                    \
        }                                                                                        \
        for (int m = 0; m < MM; m++) {                                                           \
            const float *xm = x + (size_t)m * K;                                                 \
            y[(size_t)m * N + n] = (vsum(a0[m]) + dot_tail_i8(q0, xm, k, K)) * scale[n];         \
            y[(size_t)m * N + n + 1] = (vsum(a1[m]) + dot_tail_i8(q1, xm, k, K)) * scale[n + 1]; \
        }                                                                                        \
    }                                                                                            \
    for (; n < n_hi; n++)                                                                        \
        for (int m = 0; m < MM; m++)                                                             \
            y[(size_t)m * N + n] = dot_tail_i8(Q + (size_t)n * K, x + (size_t)m * K, 0, K) * scale[n]; \
}

DEFINE_ROWS_I8(1) DEFINE_ROWS_I8(2) DEFINE_ROWS_I8(3) DEFINE_ROWS_I8(4)
DEFINE_ROWS_I8(5) DEFINE_ROWS_I8(6) DEFINE_ROWS_I8(7) DEFINE_ROWS_I8(8)

typedef void (*rows_i8_fn)(int, int, const float *, const signed char *, const float *, float *, int, int);
static const rows_i8_fn ROWS_I8[MAX_ROWS + 1] = {0, rows_i8_1, rows_i8_2, rows_i8_3, rows_i8_4,
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
    rows_fn rows = ROWS[M];
    #pragma omp parallel if ((size_t)N * K >= 65536)
    {
        int lo, hi;
        share(N, &lo, &hi);
        if (lo < hi) rows(N, K, x, W, b, y, lo, hi);
    }
    return 0;
}

/* y = (x · Qᵀ) ⊙ scale for int8 Q (N, K): 0 on success, -1 when M is out of range. */
int skinny_linear_int8(int M, int N, int K, const float *x, const signed char *Q, const float *scale, float *y) {
    if (M < 1 || M > MAX_ROWS || N < 1 || K < 1) return -1;
    rows_i8_fn rows = ROWS_I8[M];
    #pragma omp parallel if ((size_t)N * K >= 262144)
    {
        int lo, hi;
        share(N, &lo, &hi);
        if (lo < hi) rows(N, K, x, Q, scale, y, lo, hi);
    }
    return 0;
}

int skinny_linear_max_rows(void) { return MAX_ROWS; }
