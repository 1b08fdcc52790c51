/* dmlp_math.h: the per-position arithmetic of the deformable sampling
 * (ops.h, "deformable MLP"), shared by the CPU backend
 * (kernels/cpu/dmlp_ops.c) and the CUDA backend (kernels/cuda/dmlp_ops.cu)
 * so that both compute the taps, their weights and the offset and
 * modulation gradients with the same expressions. */
#ifndef GD_DMLP_MATH_H
#define GD_DMLP_MATH_H

#include <math.h>

#include "hd.h"

/* The sampling point of one position: four taps (index -1 when outside
 * the map), their weights, and the modulation. */
typedef struct dsamp {
    long idx[4];        /* (y0,x0) (y0,x1) (y1,x0) (y1,x1), element offsets / C */
    float wt[4];
    float ly, lx;       /* fractional parts */
    float m, dm;        /* modulation, d m / d om2 */
    int live_y, live_x; /* 1 when the offset is not clamped */
} dsamp;

static inline GD_HD float dmlp_clamp(float v, float lo, float hi, int *live)
{
    *live = v > lo && v < hi;
    return v < lo ? lo : v > hi ? hi : v;
}

/* position (i, j) of an H x W map, its raw values om[0..2] */
static inline GD_HD dsamp sample_point(const float *om, int i, int j, int H, int W,
                                       float max_off)
{
    dsamp s;
    float oy = dmlp_clamp(om[0], -max_off, max_off, &s.live_y);
    float ox = dmlp_clamp(om[1], -max_off, max_off, &s.live_x);
    float sg = 1.0f / (1.0f + expf(-om[2]));
    s.m = 2 * sg, s.dm = 2 * sg * (1 - sg);
    float py = (float)i + oy, px = (float)j + ox;
    float fy = floorf(py), fx = floorf(px);
    int y0 = (int)fy, x0 = (int)fx;
    s.ly = py - fy, s.lx = px - fx;
    int ys[2] = {y0, y0 + 1}, xs[2] = {x0, x0 + 1};
    float wy[2] = {1 - s.ly, s.ly}, wx[2] = {1 - s.lx, s.lx};
    for (int a = 0; a < 2; a++)
        for (int c = 0; c < 2; c++) {
            int in = ys[a] >= 0 && ys[a] < H && xs[c] >= 0 && xs[c] < W;
            s.idx[2 * a + c] = in ? (long)ys[a] * W + xs[c] : -1;
            s.wt[2 * a + c] = wy[a] * wx[c];
        }
    return s;
}

/* dom[0..2] of one position from its output gradient g [C] and its map xb
 * [H W C]: float64 dot products of g with each live tap, then the chain
 * rule through the bilinear weights (d weight / d py, d px) and the
 * modulation; 0 for a clamped offset. */
static inline GD_HD void sample_point_grad(float *dom, const dsamp *s, const float *g,
                                           const float *xb, int C)
{
    float wyd[4] = {-(1 - s->lx), -s->lx, 1 - s->lx, s->lx};
    float wxd[4] = {-(1 - s->ly), 1 - s->ly, -s->ly, s->ly};
    double gv = 0, gy = 0, gx = 0;
    for (int k = 0; k < 4; k++) {
        if (s->idx[k] < 0)
            continue;
        double d = 0;
        for (int c = 0; c < C; c++)
            d += (double)g[c] * xb[s->idx[k] * C + c];
        gv += s->wt[k] * d, gy += wyd[k] * d, gx += wxd[k] * d;
    }
    dom[0] = s->live_y ? (float)(s->m * gy) : 0.0f;
    dom[1] = s->live_x ? (float)(s->m * gx) : 0.0f;
    dom[2] = (float)(s->dm * gv);
}

#endif
