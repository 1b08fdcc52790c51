/* seg_ops.c: the CPU reference of the segmentation ops (see ops.h).
 * Per-row work runs on OpenMP threads; every sum over rows is then taken
 * in row order on one thread, so results do not depend on the thread
 * count. */
#include "seg_ops.h"

#include "seg_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PAR_MIN 32768

void cpu_bilinear_fwd(gd_backend *be, float *out, const float *in, int B, int h, int w, int H,
                      int W, int C)
{
#pragma omp parallel for collapse(2) if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++) {
            tap ty = bilinear_tap(y, h, H);
            const float *r0 = in + ((size_t)b * h + ty.i0) * w * C;
            const float *r1 = in + ((size_t)b * h + ty.i1) * w * C;
            for (int x = 0; x < W; x++) {
                tap tx = bilinear_tap(x, w, W);
                float *o = out + (((size_t)b * H + y) * W + x) * C;
                for (int c = 0; c < C; c++)
                    o[c] = ty.l0 * (tx.l0 * r0[(size_t)tx.i0 * C + c] +
                                    tx.l1 * r0[(size_t)tx.i1 * C + c]) +
                           ty.l1 * (tx.l0 * r1[(size_t)tx.i0 * C + c] +
                                    tx.l1 * r1[(size_t)tx.i1 * C + c]);
            }
        }
}

void cpu_bilinear_bwd(gd_backend *be, float *din, const float *dout, int B, int h, int w, int H,
                      int W, int C)
{
    /* each map b scatters into its own part of din, in output order */
#pragma omp parallel for if ((size_t)B * H * W * C > PAR_MIN)
    for (int b = 0; b < B; b++) {
        float *d = din + (size_t)b * h * w * C;
        memset(d, 0, (size_t)h * w * C * sizeof(float));
        for (int y = 0; y < H; y++) {
            tap ty = bilinear_tap(y, h, H);
            float *r0 = d + (size_t)ty.i0 * w * C, *r1 = d + (size_t)ty.i1 * w * C;
            for (int x = 0; x < W; x++) {
                tap tx = bilinear_tap(x, w, W);
                const float *g = dout + (((size_t)b * H + y) * W + x) * C;
                for (int c = 0; c < C; c++) {
                    r0[(size_t)tx.i0 * C + c] += ty.l0 * tx.l0 * g[c];
                    r0[(size_t)tx.i1 * C + c] += ty.l0 * tx.l1 * g[c];
                    r1[(size_t)tx.i0 * C + c] += ty.l1 * tx.l0 * g[c];
                    r1[(size_t)tx.i1 * C + c] += ty.l1 * tx.l1 * g[c];
                }
            }
        }
    }
}

void cpu_seg_ce(gd_backend *be, float *loss, float *dlogits, const float *logits,
                const float *labels, const float *weights, int rows, int K, float scale)
{
    double *lr = malloc((size_t)(rows ? rows : 1) * 2 * sizeof(double)); /* loss, weight per row */
    if (!lr) {
        loss[0] = NAN; /* reported as a non-finite loss by the caller */
        return;
    }
#pragma omp parallel for if ((size_t)rows * K > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        int c = row_class(labels, r, K);
        const float *x = logits + (size_t)r * K;
        double w = c < 0 ? 0 : weights ? weights[c] : 1;
        lr[2 * r] = c < 0 ? 0 : w * (logsumexp(x, 1, K) - x[c]);
        lr[2 * r + 1] = w;
    }
    double sl = 0, sw = 0;
    for (int r = 0; r < rows; r++)
        sl += lr[2 * r], sw += lr[2 * r + 1];
    loss[0] = sw > 0 ? (float)(sl / sw) : 0.0f;
    loss[1] = (float)sw;
    if (dlogits) {
#pragma omp parallel for if ((size_t)rows * K > PAR_MIN)
        for (int r = 0; r < rows; r++) {
            int c = row_class(labels, r, K);
            const float *x = logits + (size_t)r * K;
            float *g = dlogits + (size_t)r * K;
            if (c < 0 || !(sw > 0)) {
                memset(g, 0, (size_t)K * sizeof(float));
                continue;
            }
            double lse = logsumexp(x, 1, K), f = scale * lr[2 * r + 1] / sw;
            for (int k = 0; k < K; k++)
                g[k] = (float)(f * (exp(x[k] - lse) - (k == c)));
        }
    }
    free(lr);
}

void cpu_proto_loss(gd_backend *be, float *loss, float *df, const float *f, const float *protos,
                    const float *labels, int rows, int D, int K, float T, float alpha,
                    float scale)
{
    double *lr = malloc((size_t)(rows ? rows : 1) * sizeof(double));
    if (!lr) {
        loss[0] = NAN;
        return;
    }
    double inv_t = 1.0 / T;
    int n = 0;
    for (int r = 0; r < rows; r++)
        n += row_class(labels, r, K) >= 0;
#pragma omp parallel for if ((size_t)rows * D > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        int c = row_class(labels, r, K);
        const float *x = f + (size_t)r * D;
        float *g = df ? df + (size_t)r * D : NULL;
        lr[r] = 0;
        if (c < 0) {
            if (g)
                memset(g, 0, (size_t)D * sizeof(float));
            continue;
        }
        const float *p = protos + (size_t)c * D;
        double lq = logsumexp(p, inv_t, D), ls = logsumexp(x, inv_t, D), l1 = logsumexp(x, 1, D);
        int hard = argmax(p, D);
        double kl = 0;
        for (int d = 0; d < D; d++) {
            double logq = p[d] * inv_t - lq, logs = x[d] * inv_t - ls;
            kl += exp(logq) * (logq - logs);
        }
        lr[r] = alpha * (double)T * T * kl + (1 - alpha) * (l1 - x[hard]);
        if (!g)
            continue;
        /* d/dx: alpha T (s - q) + (1 - alpha) (softmax(x) - onehot) */
        double f1 = scale / n;
        for (int d = 0; d < D; d++) {
            double q = exp(p[d] * inv_t - lq), s = exp(x[d] * inv_t - ls), s1 = exp(x[d] - l1);
            g[d] = (float)(f1 * (alpha * T * (s - q) + (1 - alpha) * (s1 - (d == hard))));
        }
    }
    double sl = 0;
    for (int r = 0; r < rows; r++)
        sl += lr[r];
    loss[0] = n ? (float)(sl / n) : 0.0f;
    loss[1] = (float)n;
    free(lr);
}

void cpu_class_sums(gd_backend *be, float *sums, float *counts, const float *f,
                    const float *labels, int rows, int D, int K)
{
    /* one (class, dimension) per iteration, rows in order within it */
#pragma omp parallel for collapse(2) if ((size_t)rows * D > PAR_MIN)
    for (int c = 0; c < K; c++)
        for (int d = 0; d < D; d++) {
            double acc = 0;
            for (int r = 0; r < rows; r++)
                if (row_class(labels, r, K) == c)
                    acc += f[(size_t)r * D + d];
            sums[(size_t)c * D + d] += (float)acc;
        }
    for (int c = 0; c < K; c++) {
        long n = 0;
        for (int r = 0; r < rows; r++)
            n += row_class(labels, r, K) == c;
        counts[c] += (float)n;
    }
}
