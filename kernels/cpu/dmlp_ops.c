/* dmlp_ops.c: the CPU reference of the deformable-MLP ops (see ops.h).
 * Gathers run on OpenMP threads per output position; a scatter or a sum
 * over positions runs in a fixed order on one thread per map or channel,
 * so results do not depend on the thread count. */
#include "dmlp_ops.h"

#include <math.h>
#include <string.h>

#define PAR_MIN 32768

void cpu_dwconv3_fwd(gd_backend *be, float *y, const float *x, const float *w, const float *bias,
                     int B, int H, int W, int C)
{
    (void)be;
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                float *o = y + (((size_t)b * H + i) * W + j) * C;
                for (int c = 0; c < C; c++)
                    o[c] = bias[c];
                for (int ky = 0; ky < 3; ky++) {
                    int ii = i + ky - 1;
                    if (ii < 0 || ii >= H)
                        continue;
                    for (int kx = 0; kx < 3; kx++) {
                        int jj = j + kx - 1;
                        if (jj < 0 || jj >= W)
                            continue;
                        const float *s = x + (((size_t)b * H + ii) * W + jj) * C;
                        for (int c = 0; c < C; c++)
                            o[c] += w[c * 9 + ky * 3 + kx] * s[c];
                    }
                }
            }
}

/* dx: the same gather with the kernel flipped; dw, dbias: per channel, a
 * float64 sum over every position in order. */
void cpu_dwconv3_bwd(gd_backend *be, float *dx, float *dw, float *dbias, const float *dy,
                     const float *x, const float *w, int B, int H, int W, int C)
{
    (void)be;
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                float *o = dx + (((size_t)b * H + i) * W + j) * C;
                memset(o, 0, (size_t)C * sizeof *o);
                for (int ky = 0; ky < 3; ky++) {
                    int ii = i - ky + 1; /* the output that read x[i] with tap ky */
                    if (ii < 0 || ii >= H)
                        continue;
                    for (int kx = 0; kx < 3; kx++) {
                        int jj = j - kx + 1;
                        if (jj < 0 || jj >= W)
                            continue;
                        const float *g = dy + (((size_t)b * H + ii) * W + jj) * C;
                        for (int c = 0; c < C; c++)
                            o[c] += w[c * 9 + ky * 3 + kx] * g[c];
                    }
                }
            }
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

/* The sampling point of one position: four taps (index -1 when outside
 * the map), their weights, and the modulation. */
typedef struct dsamp {
    long idx[4];          /* (y0,x0) (y0,x1) (y1,x0) (y1,x1), element offsets / C */
    float wt[4];
    float ly, lx;         /* fractional parts */
    float m, dm;          /* modulation, d m / d om2 */
    int live_y, live_x;   /* 1 when the offset is not clamped */
} dsamp;

static float clampf(float v, float lo, float hi, int *live)
{
    *live = v > lo && v < hi;
    return v < lo ? lo : v > hi ? hi : v;
}

static dsamp sample_point(const float *om, int i, int j, int H, int W, float max_off)
{
    dsamp s;
    float oy = clampf(om[0], -max_off, max_off, &s.live_y);
    float ox = clampf(om[1], -max_off, max_off, &s.live_x);
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
                const float *xb = x + (size_t)b * H * W * C, *g = dy + p * C;
                /* d weight / d py and d px of each tap */
                float wyd[4] = {-(1 - s.lx), -s.lx, 1 - s.lx, s.lx};
                float wxd[4] = {-(1 - s.ly), 1 - s.ly, -s.ly, s.ly};
                double gv = 0, gy = 0, gx = 0;
                for (int k = 0; k < 4; k++) {
                    if (s.idx[k] < 0)
                        continue;
                    double d = 0;
                    for (int c = 0; c < C; c++)
                        d += (double)g[c] * xb[s.idx[k] * C + c];
                    gv += s.wt[k] * d, gy += wyd[k] * d, gx += wxd[k] * d;
                }
                dom[3 * p] = s.live_y ? (float)(s.m * gy) : 0.0f;
                dom[3 * p + 1] = s.live_x ? (float)(s.m * gx) : 0.0f;
                dom[3 * p + 2] = (float)(s.dm * gv);
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
