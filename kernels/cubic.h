/* cubic.h: the bicubic resize of posinterp (ops.h), shared by the CPU and
 * the CUDA backends so that both resize the position embedding with the
 * same arithmetic.  Keys's cubic convolution with A = -0.75, as torch's
 * upsample_bicubic2d: torch computes 1/scale in double and the source
 * coordinate in float, (o + 0.5) / scale - 0.5, clamped at the borders. */
#ifndef GD_CUBIC_H
#define GD_CUBIC_H

#include <math.h>
#include <stddef.h>

#include "hd.h"

static inline GD_HD void gd_cubic_weights(double t, double w[4])
{
    const double A = -0.75;
    double x1 = t + 1, x2 = t, x3 = 1 - t, x4 = 2 - t;
    w[0] = ((A * x1 - 5 * A) * x1 + 8 * A) * x1 - 4 * A;
    w[1] = ((A + 2) * x2 - (A + 3)) * x2 * x2 + 1;
    w[2] = ((A + 2) * x3 - (A + 3)) * x3 * x3 + 1;
    w[3] = ((A * x4 - 5 * A) * x4 + 8 * A) * x4 - 4 * A;
}

/* For output index o: the 4 clamped source indices (of `in`) and their
 * weights.  On the GPU the _rn intrinsics keep nvcc from fusing the
 * coordinate into an FMA, which could move floor() across an integer. */
static inline GD_HD void gd_cubic_taps(int o, double scale, int in, int idx[4], double w[4])
{
    float ratio = (float)(1.0 / scale);
#ifdef __CUDA_ARCH__
    float real = __fsub_rn(__fmul_rn(ratio, __fadd_rn((float)o, 0.5f)), 0.5f);
#else
    float real = ratio * (o + 0.5f) - 0.5f;
#endif
    float fl = floorf(real);
    gd_cubic_weights(real - fl, w);
    for (int k = 0; k < 4; k++) {
        int i = (int)fl - 1 + k;
        idx[k] = i < 0 ? 0 : i >= in ? in - 1 : i;
    }
}

/* Output pixel (taps iy, wy by ix, wx), channel d: the 16-tap sum over the
 * g x g grid of rows of D floats, in float64. */
static inline GD_HD float gd_cubic_gather(const float *grid, int g, int D, int d, const int iy[4],
                                          const double wy[4], const int ix[4], const double wx[4])
{
    double s = 0;
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 4; c++)
            s += wy[a] * wx[c] * grid[((size_t)iy[a] * g + ix[c]) * D + d];
    return (float)s;
}

/* The adjoint for channel d: the gradient of every output pixel (dout,
 * after its CLS row) added back onto its 16 taps of grid, in raster order.
 * The caller owns column d of grid. */
static inline GD_HD void gd_cubic_scatter(float *grid, const float *dout, int g, int oh, int ow,
                                          double sh, double sw, int D, int d)
{
    for (int y = 0; y < oh; y++) {
        int iy[4], ix[4];
        double wy[4], wx[4];
        gd_cubic_taps(y, sh, g, iy, wy);
        for (int x = 0; x < ow; x++) {
            gd_cubic_taps(x, sw, g, ix, wx);
            double v = dout[(1 + (size_t)y * ow + x) * D + d];
            for (int a = 0; a < 4; a++)
                for (int c = 0; c < 4; c++)
                    grid[((size_t)iy[a] * g + ix[c]) * D + d] += (float)(wy[a] * wx[c] * v);
        }
    }
}

#endif
