/* dmlp_ops.c: the CPU reference of the deformable-MLP ops (see ops.h).
 * Gathers run on OpenMP threads per output position; a scatter or a sum
 * over positions runs in a fixed order on one thread per map or channel,
 * so results do not depend on the thread count. */
#include "dmlp_ops.h"

#include "dmlp_math.h"

#include <math.h>
#include <string.h>

#define PAR_MIN 32768

/* out[b,i,j,c] = init[c] (0 when NULL) + sum over the taps of
 * w[c,ky,kx] in[b, i + dir (ky - 1), j + dir (kx - 1), c], zero outside the
 * map: the convolution with dir = 1, its input gradient (the flipped
 * kernel) with dir = -1. */
static void dw3_gather(float *out, const float *in, const float *w, const float *init, int dir,
                       int B, int H, int W, int C)
{
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                float *o = out + (((size_t)b * H + i) * W + j) * C;
                for (int c = 0; c < C; c++)
                    o[c] = init ? init[c] : 0.0f;
                for (int ky = 0; ky < 3; ky++) {
                    int ii = i + dir * (ky - 1);
                    if (ii < 0 || ii >= H)
                        continue;
                    for (int kx = 0; kx < 3; kx++) {
                        int jj = j + dir * (kx - 1);
                        if (jj < 0 || jj >= W)
                            continue;
                        const float *s = in + (((size_t)b * H + ii) * W + jj) * C;
                        for (int c = 0; c < C; c++)
                            o[c] += w[c * 9 + ky * 3 + kx] * s[c];
                    }
                }
            }
}

void cpu_dwconv3_fwd(gd_backend *be, float *y, const float *x, const float *w, const float *bias,
                     int B, int H, int W, int C)
{
    (void)be;
    dw3_gather(y, x, w, bias, 1, B, H, W, C);
}

/* dx: the same gather with the kernel flipped; dw, dbias: per channel, a
 * float64 sum over every position in order. */
void cpu_dwconv3_bwd(gd_backend *be, float *dx, float *dw, float *dbias, const float *dy,
                     const float *x, const float *w, int B, int H, int W, int C)
{
    (void)be;
    dw3_gather(dx, dy, w, NULL, -1, B, H, W, C);
#pragma omp parallel for if ((size_t)B * H * W * C > PAR_MIN)
    for (int c = 0; c < C; c++) {
        double acc[9] = {0}, ab = 0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    double g = dy[(((size_t)b * H + i) * W + j) * C + c];
                    ab += g;
                    for (int k = 0; k < 9; k++) {
                        int ii = i + k / 3 - 1, jj = j + k % 3 - 1;
                        if (ii >= 0 && ii < H && jj >= 0 && jj < W)
                            acc[k] += g * x[(((size_t)b * H + ii) * W + jj) * C + c];
                    }
                }
        for (int k = 0; k < 9; k++)
            dw[c * 9 + k] += (float)acc[k];
        dbias[c] += (float)ab;
    }
}

void cpu_deform_sample_fwd(gd_backend *be, float *y, const float *x, const float *om, int B,
                           int H, int W, int C, float max_off)
{
    (void)be;
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                size_t p = ((size_t)b * H + i) * W + j;
                dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
                const float *xb = x + (size_t)b * H * W * C;
                float *o = y + p * C;
                memset(o, 0, (size_t)C * sizeof *o);
                for (int k = 0; k < 4; k++)
                    if (s.idx[k] >= 0)
                        for (int c = 0; c < C; c++)
                            o[c] += s.m * s.wt[k] * xb[s.idx[k] * C + c];
            }
}

/* dom per position (a gather); dx per map (a scatter in position order). */
void cpu_deform_sample_bwd(gd_backend *be, float *dx, float *dom, const float *dy,
                           const float *x, const float *om, int B, int H, int W, int C,
                           float max_off)
{
    (void)be;
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                size_t p = ((size_t)b * H + i) * W + j;
                dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
                sample_point_grad(dom + 3 * p, &s, dy + p * C, x + (size_t)b * H * W * C, C);
            }
#pragma omp parallel for if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++) {
        float *db = dx + (size_t)b * H * W * C;
        memset(db, 0, (size_t)H * W * C * sizeof *db);
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                size_t p = ((size_t)b * H + i) * W + j;
                dsamp s = sample_point(om + 3 * p, i, j, H, W, max_off);
                const float *g = dy + p * C;
                for (int k = 0; k < 4; k++)
                    if (s.idx[k] >= 0)
                        for (int c = 0; c < C; c++)
                            db[s.idx[k] * C + c] += s.m * s.wt[k] * g[c];
            }
    }
}
