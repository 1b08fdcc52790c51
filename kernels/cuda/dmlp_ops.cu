/* dmlp_ops.cu: the deformable-MLP ops of ops.h (mpa-adapt --head dmlp) on
 * the GPU, with the semantics and the arithmetic of the CPU reference
 * (kernels/cpu/dmlp_ops.c): the sampling point and the offset gradient of
 * a position come from kernels/dmlp_math.h, shared with the CPU; the
 * per-element float sums add the same products in the same order (built
 * with --fmad=false, as the rest of the backend).  Only the float64 sums
 * of the weight and bias gradients are added in another order (fixed by
 * the shape).  No atomics: every result is written by one thread, so the
 * bits do not change from run to run.
 *
 * Layout of the work:
 *   dwconv3_fwd, dwconv3_bwd (dx)  one thread per element, a 3x3 gather;
 *   dwconv3_bwd (dw, dbias)  the backend's ordered column sums over the
 *                 B H W positions (cuda_internal.h), 10 C columns;
 *   deform_sample_fwd  one thread per element, its four taps;
 *   deform_sample_bwd (dom)  one thread per position (C is small);
 *   deform_sample_bwd (dx)  the one scatter: one thread per (map, channel)
 *                 walks the positions in the CPU's order and adds into its
 *                 own channel of the map, so each element gets the CPU's
 *                 float sum.  B C threads only: simplicity over speed. */
#include "cuda_internal.h"
#include "dmlp_math.h"

#include <climits>

namespace {

using namespace gdcu;

/* false (recorded) on a negative size or more positions than an int
 * counts (the column sums' rows); an empty shape is fine (the launches
 * skip it: with C = 0, deform_sample_bwd still writes dom). */
bool dmlp_shape(cuda_ctx *c, const char *op, int B, int H, int W, int C)
{
    const char *why = B < 0 || H < 0 || W < 0 || C < 0 ? "bad shape"
                      : (size_t)B * H * W > INT_MAX   ? "too many positions"
                                                      : NULL;
    if (why)
        record(c, "cuda: %s(B=%d, H=%d, W=%d, C=%d): %s", op, B, H, W, C, why);
    return !why;
}

/* ---- depthwise 3x3 convolution ------------------------------------------------------ */

/* y[b, i, j, c] = bias[c] + the taps in (ky, kx) order, as the CPU */
__global__ void dwconv3_fwd_kernel(float *y, const float *x, const float *w, const float *bias,
                                   int B, int H, int W, int C)
{
    GRID_STRIDE(k, (size_t)B * H * W * C)
    {
        size_t p = k / C;
        int c = (int)(k % C), j = (int)(p % W), i = (int)(p / W % H);
        size_t b = p / ((size_t)W * H);
        float o = bias[c];
        for (int ky = 0; ky < 3; ky++) {
            int ii = i + ky - 1;
            if (ii < 0 || ii >= H)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int jj = j + kx - 1;
                if (jj < 0 || jj >= W)
                    continue;
                o += w[c * 9 + ky * 3 + kx] * x[((b * H + ii) * W + jj) * C + c];
            }
        }
        y[k] = o;
    }
}

/* dx: the gather with the kernel flipped (overwrite) */
__global__ void dwconv3_dx_kernel(float *dx, const float *dy, const float *w, int B, int H,
                                  int W, int C)
{
    GRID_STRIDE(k, (size_t)B * H * W * C)
    {
        size_t p = k / C;
        int c = (int)(k % C), j = (int)(p % W), i = (int)(p / W % H);
        size_t b = p / ((size_t)W * H);
        float o = 0.0f;
        for (int ky = 0; ky < 3; ky++) {
            int ii = i - ky + 1; /* the output that read x[i] with tap ky */
            if (ii < 0 || ii >= H)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int jj = j - kx + 1;
                if (jj < 0 || jj >= W)
                    continue;
                o += w[c * 9 + ky * 3 + kx] * dy[((b * H + ii) * W + jj) * C + c];
            }
        }
        dx[k] = o;
    }
}

/* Columns i < 9 C: dw[i] (channel i / 9, tap i % 9), the C after them:
 * dbias; rows: the B H W positions. */
struct dwconv3_grad_f {
    float *dw, *dbias;
    const float *dy, *x;
    int H, W, C;
    __device__ double term(int r, size_t i) const
    {
        size_t n9 = (size_t)9 * C;
        if (i >= n9)
            return (double)dy[(size_t)r * C + (i - n9)];
        int c = (int)(i / 9), t = (int)(i % 9);
        int j = r % W, y = r / W % H, b = r / (W * H);
        int ii = y + t / 3 - 1, jj = j + t % 3 - 1;
        if (ii < 0 || ii >= H || jj < 0 || jj >= W)
            return 0.0;
        double g = dy[(size_t)r * C + c];
        return g * x[(((size_t)b * H + ii) * W + jj) * C + c];
    }
    __device__ void write(size_t i, double s) const
    {
        size_t n9 = (size_t)9 * C;
        if (i >= n9)
            dbias[i - n9] += (float)s;
        else
            dw[i] += (float)s;
    }
};

void cu_dwconv3_fwd(gd_backend *be, float *y, const float *x, const float *w, const float *bias,
                    int B, int H, int W, int C)
{
    cuda_ctx *c = enter(be);
    if (!dmlp_shape(c, "dwconv3_fwd", B, H, W, C))
        return;
    launch_n(c, (size_t)B * H * W * C, "dwconv3_fwd", dwconv3_fwd_kernel, y, x, w, bias, B, H,
             W, C);
}

void cu_dwconv3_bwd(gd_backend *be, float *dx, float *dw, float *dbias, const float *dy,
                    const float *x, const float *w, int B, int H, int W, int C)
{
    cuda_ctx *c = enter(be);
    if (!dmlp_shape(c, "dwconv3_bwd", B, H, W, C))
        return;
    size_t rows = (size_t)B * H * W;
    launch_n(c, rows * C, "dwconv3_bwd", dwconv3_dx_kernel, dx, dy, w, B, H, W, C);
    colsum(c, dwconv3_grad_f{dw, dbias, dy, x, H, W, C}, (int)rows, (size_t)10 * C,
           "dwconv3_bwd");
}

/* ---- deformable sampling ------------------------------------------------------------ */

/* y[p, c] = the live taps' m wt x, added in tap order from 0, as the CPU */
__global__ void deform_fwd_kernel(float *y, const float *x, const float *om, int B, int H, int W,
                                  int C, float max_off)
{
    GRID_STRIDE(k, (size_t)B * H * W * C)
    {
        size_t p = k / C;
        int c = (int)(k % C), j = (int)(p % W), i = (int)(p / W % H);
        size_t b = p / ((size_t)W * H);
        dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
        const float *xb = x + b * H * W * C;
        float o = 0.0f;
        for (int t = 0; t < 4; t++)
            if (s.idx[t] >= 0)
                o += s.m * s.wt[t] * xb[s.idx[t] * C + c];
        y[k] = o;
    }
}

__global__ void deform_dom_kernel(float *dom, const float *dy, const float *x, const float *om,
                                  int B, int H, int W, int C, float max_off)
{
    GRID_STRIDE(p, (size_t)B * H * W)
    {
        int j = (int)(p % W), i = (int)(p / W % H);
        size_t b = p / ((size_t)W * H);
        dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
        sample_point_grad(dom + 3 * p, &s, dy + p * C, x + b * H * W * C, C);
    }
}

/* Thread (b, c) zeroes channel c of map b, then scatters into it position
 * by position, tap by tap: the CPU's loop for that channel.  Threads of a
 * warp take neighbouring channels of one position (coalesced). */
__global__ void deform_dx_kernel(float *dx, const float *dy, const float *om, int B, int H,
                                 int W, int C, float max_off)
{
    GRID_STRIDE(k, (size_t)B * C)
    {
        int c = (int)(k % C);
        size_t b = k / C, hw = (size_t)H * W;
        float *db = dx + b * hw * C;
        for (size_t q = 0; q < hw; q++)
            db[q * C + c] = 0.0f;
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                size_t p = (b * H + i) * W + j;
                dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
                float g = dy[p * C + c];
                for (int t = 0; t < 4; t++)
                    if (s.idx[t] >= 0)
                        db[s.idx[t] * C + c] += s.m * s.wt[t] * g;
            }
    }
}

void cu_deform_sample_fwd(gd_backend *be, float *y, const float *x, const float *om, int B,
                          int H, int W, int C, float max_off)
{
    cuda_ctx *c = enter(be);
    if (!dmlp_shape(c, "deform_sample_fwd", B, H, W, C))
        return;
    launch_n(c, (size_t)B * H * W * C, "deform_sample_fwd", deform_fwd_kernel, y, x, om, B, H, W,
             C, max_off);
}

void cu_deform_sample_bwd(gd_backend *be, float *dx, float *dom, const float *dy, const float *x,
                          const float *om, int B, int H, int W, int C, float max_off)
{
    cuda_ctx *c = enter(be);
    if (!dmlp_shape(c, "deform_sample_bwd", B, H, W, C))
        return;
    launch_n(c, (size_t)B * H * W, "deform_sample_bwd (dom)", deform_dom_kernel, dom, dy, x, om,
             B, H, W, C, max_off);
    launch_n(c, (size_t)B * C, "deform_sample_bwd (dx)", deform_dx_kernel, dx, dy, om, B, H, W,
             C, max_off);
}

} // namespace

void gdcu::fill_dmlp_ops(gd_backend *be)
{
    be->dwconv3_fwd = cu_dwconv3_fwd;
    be->dwconv3_bwd = cu_dwconv3_bwd;
    be->deform_sample_fwd = cu_deform_sample_fwd;
    be->deform_sample_bwd = cu_deform_sample_bwd;
}
