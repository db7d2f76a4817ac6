/* A vectorisable exponential for the softmax kernels (decode_attention.c, log_softmax_topk.c). */
#ifndef LMLAB_EXP_NONPOSITIVE_H
#define LMLAB_EXP_NONPOSITIVE_H

#include <math.h>

/* e^x for x ≤ 0 (softmax scores less their maximum) to within about 1 ulp, and 0 below −87 (−inf
 * included); plain arithmetic, so loops over it vectorise: e^x = 2^n · e^r with n = round(x/ln 2) (by adding and removing 1.5·2²³),
 * r = x − n·ln 2 (ln 2 in two parts, Cody–Waite), e^r from Cephes' degree-5 polynomial. */
static inline float exp_nonpositive(float x) {
    float clamped = x < -87.f ? -87.f : x;
    float n = (clamped * 1.44269504f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    union { int i; float f; } two_n;
    two_n.i = ((int)n + 127) << 23;
    float y = (p * r * r + r + 1.f) * two_n.f;
    return x < -87.f ? 0.f : y;
}

#endif
