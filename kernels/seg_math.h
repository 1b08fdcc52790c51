/* seg_math.h: the per-element arithmetic of the segmentation ops (ops.h),
 * shared by the CPU backend (kernels/cpu/seg_ops.c) and the CUDA backend
 * (kernels/cuda/seg_ops.cu) so that both compute with the same
 * expressions, as cubic.h does for posinterp. */
#ifndef GD_SEG_MATH_H
#define GD_SEG_MATH_H

#include <math.h>
#include <stddef.h>

#include "hd.h"

/* torch's area_pixel_compute_source_index + upsample_bilinear2d taps
 * (align_corners = False): source coordinate (dst + 0.5) in / out - 0.5
 * in double, clamped at 0, the upper tap clamped to the last index.  Both
 * indices are nondecreasing in dst. */
typedef struct tap {
    int i0, i1;
    float l0, l1;
} tap;

static inline GD_HD tap bilinear_tap(int dst, int in, int out)
{
    double src = (dst + 0.5) * in / out - 0.5;
    if (src < 0)
        src = 0;
    int i0 = (int)src;
    if (i0 > in - 1)
        i0 = in - 1;
    tap t;
    t.i0 = i0;
    t.i1 = i0 < in - 1 ? i0 + 1 : i0;
    t.l1 = (float)(src - i0);
    t.l0 = 1.0f - t.l1;
    return t;
}

/* the class of row r, or -1 when its label is the ignore index (or any
 * value outside [0, K), or not an integer) */
static inline GD_HD int row_class(const float *labels, size_t r, int K)
{
    float v = labels[r];
    return v >= 0 && v < K && v == floorf(v) ? (int)v : -1;
}

/* log-sum-exp of x * inv_t over n values, float64 */
static inline GD_HD double logsumexp(const float *x, double inv_t, int n)
{
    double m = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, x[i] * inv_t);
    for (int i = 0; i < n; i++)
        s += exp(x[i] * inv_t - m);
    return m + log(s);
}

/* the first index of the largest of n values */
static inline GD_HD int argmax(const float *p, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (p[i] > p[best])
            best = i;
    return best;
}

#endif
