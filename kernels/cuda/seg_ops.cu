/* seg_ops.cu: the segmentation ops of ops.h (mpa-adapt) on the GPU, with
 * the semantics and the arithmetic of the CPU reference
 * (kernels/cpu/seg_ops.c): the same float expressions (the per-element
 * ones shared through kernels/seg_math.h; built with --fmad=false, as the
 * rest of the backend), the same float64 row sums.
 * Only sums over rows are added in another order (fixed by the shape, so
 * the bits do not change from run to run).
 *
 * Layout of the work:
 *   bilinear_fwd  one thread per output element;
 *   bilinear_bwd  one thread per input element that gathers, in the CPU's
 *                 order, what the output pixels touching it scatter there:
 *                 no atomics, and the same float sums as the CPU's loop;
 *   seg_ce, proto_loss  one thread per row (K classes and D = emb_chans
 *                 are small): per-block float64 partial sums of the rows'
 *                 losses and weights, those summed in order by one thread,
 *                 then the gradient pass, which needs the total;
 *   class_sums    the backend's ordered column sums (cuda_internal.h). */
#include "cuda_internal.h"
#include "seg_math.h"

#include <cmath>

namespace {

using namespace gdcu;

/* ---- bilinear resize ---------------------------------------------------------------- */

__global__ void bilinear_fwd_kernel(float *out, const float *in, int B, int h, int w, int H,
                                    int W, int C)
{
    GRID_STRIDE(k, (size_t)B * H * W * C)
    {
        size_t p = k / C;
        int c = (int)(k % C), x = (int)(p % W), y = (int)(p / W % H);
        size_t b = p / ((size_t)W * H);
        tap ty = bilinear_tap(y, h, H), tx = bilinear_tap(x, w, W);
        const float *r0 = in + (b * h + ty.i0) * w * C, *r1 = in + (b * h + ty.i1) * w * C;
        out[k] = ty.l0 * (tx.l0 * r0[(size_t)tx.i0 * C + c] + tx.l1 * r0[(size_t)tx.i1 * C + c]) +
                 ty.l1 * (tx.l0 * r1[(size_t)tx.i0 * C + c] + tx.l1 * r1[(size_t)tx.i1 * C + c]);
    }
}

/* The outputs [*lo, *hi) whose taps touch source index i (i0 <= i <= i1).
 * Both taps are nondecreasing in the output index, so those outputs are
 * one run, found by bisection. */
__device__ void touching(int i, int in, int out, int *lo, int *hi)
{
    int a = 0, b = out;
    while (a < b) { /* the first output with i1 >= i */
        int m = a + (b - a) / 2;
        if (bilinear_tap(m, in, out).i1 >= i)
            b = m;
        else
            a = m + 1;
    }
    *lo = a;
    b = out;
    while (a < b) { /* the first output with i0 > i (none before lo) */
        int m = a + (b - a) / 2;
        if (bilinear_tap(m, in, out).i0 > i)
            b = m;
        else
            a = m + 1;
    }
    *hi = a;
}

/* din[b, iy, ix, c]: the CPU's backward loop scatters output pixel by
 * output pixel (rows, then columns), each into its taps r0[i0], r0[i1],
 * r1[i0], r1[i1] in that order; this thread adds the same products in the
 * same order, so each element gets the CPU's float sum. */
__global__ void bilinear_bwd_kernel(float *din, const float *dout, int B, int h, int w, int H,
                                    int W, int C)
{
    GRID_STRIDE(k, (size_t)B * h * w * C)
    {
        size_t p = k / C;
        int c = (int)(k % C), ix = (int)(p % w), iy = (int)(p / w % h);
        size_t b = p / ((size_t)w * h);
        int y0, y1, x0, x1;
        touching(iy, h, H, &y0, &y1);
        touching(ix, w, W, &x0, &x1);
        float acc = 0.0f;
        for (int y = y0; y < y1; y++) {
            tap ty = bilinear_tap(y, h, H);
            const float *g = dout + (b * H + y) * W * C + c;
            for (int x = x0; x < x1; x++) {
                tap tx = bilinear_tap(x, w, W);
                float gv = g[(size_t)x * C];
                if (ty.i0 == iy) {
                    if (tx.i0 == ix)
                        acc += ty.l0 * tx.l0 * gv;
                    if (tx.i1 == ix)
                        acc += ty.l0 * tx.l1 * gv;
                }
                if (ty.i1 == iy) {
                    if (tx.i0 == ix)
                        acc += ty.l1 * tx.l0 * gv;
                    if (tx.i1 == ix)
                        acc += ty.l1 * tx.l1 * gv;
                }
            }
        }
        din[k] = acc;
    }
}

bool bilinear_shape_ok(int B, int h, int w, int H, int W, int C)
{
    return B > 0 && h > 0 && w > 0 && H > 0 && W > 0 && C > 0;
}

#define BL_SHAPE(op) op "(B=%d, h=%d, w=%d, H=%d, W=%d, C=%d)", B, h, w, H, W, C

void cu_bilinear_fwd(gd_backend *be, float *out, const float *in, int B, int h, int w, int H,
                     int W, int C)
{
    cuda_ctx *c = enter(be);
    if (!bilinear_shape_ok(B, h, w, H, W, C))
        return;
    bilinear_fwd_kernel<<<grid_for((size_t)B * H * W * C), NT, 0, c->stream>>>(out, in, B, h, w,
                                                                              H, W, C);
    launched(c, BL_SHAPE("bilinear_fwd"));
}

void cu_bilinear_bwd(gd_backend *be, float *din, const float *dout, int B, int h, int w, int H,
                     int W, int C)
{
    cuda_ctx *c = enter(be);
    if (!bilinear_shape_ok(B, h, w, H, W, C))
        return;
    bilinear_bwd_kernel<<<grid_for((size_t)B * h * w * C), NT, 0, c->stream>>>(din, dout, B, h,
                                                                              w, H, W, C);
    launched(c, BL_SHAPE("bilinear_bwd"));
}

#undef BL_SHAPE

/* ---- rows with a class label -------------------------------------------------------- */

/* A row's term of a weighted mean: its weighted loss and its weight. */
struct row_term {
    double v, w;
};

/* part[2 b], part[2 b + 1]: block b's sums of f.row(r).v and .w over its
 * rows (a grid-stride assignment, fixed by rows and the grid). */
template <class F> __global__ void mean_parts_kernel(F f, int rows, double *part)
{
    double v = 0, w = 0;
    GRID_STRIDE(r, (size_t)rows)
    {
        row_term t = f.row(r);
        v += t.v;
        w += t.w;
    }
    v = block_sum(v);
    w = block_sum(w);
    if (threadIdx.x == 0) {
        part[2 * blockIdx.x] = v;
        part[2 * blockIdx.x + 1] = w;
    }
}

/* tot = the totals (in block order); loss[0] = their weighted mean (0
 * when the weight is 0), loss[1] = the weight */
__global__ void mean_finish_kernel(float *loss, double *tot, const double *part, unsigned nb)
{
    double v = 0, w = 0;
    for (unsigned b = 0; b < nb; b++) {
        v += part[2 * b];
        w += part[2 * b + 1];
    }
    tot[0] = v;
    tot[1] = w;
    loss[0] = w > 0 ? (float)(v / w) : 0.0f;
    loss[1] = (float)w;
}

/* Scratch of a loss op: tot [2] and part [2 nb] (float64), then `extra`
 * bytes; NULL (recorded) on failure. */
double *loss_scratch(cuda_ctx *c, unsigned nb, size_t extra, const char *op)
{
    return (double *)scratch(c, WS_SEG, (2 + 2 * (size_t)nb) * sizeof(double) + extra, op);
}

unsigned mean_blocks(int rows)
{
    unsigned nb = grid_for((size_t)rows);
    return nb > RED_BLOCKS ? RED_BLOCKS : nb;
}

/* The weighted mean of f's rows into loss and tot (two launches: the
 * caller's launched() after it reports either, as a launch error stays
 * until read). */
template <class F>
void weighted_mean(cuda_ctx *c, F f, int rows, float *loss, double *tot, unsigned nb)
{
    mean_parts_kernel<<<nb, NT, 0, c->stream>>>(f, rows, tot + 2);
    mean_finish_kernel<<<1, 1, 0, c->stream>>>(loss, tot, tot + 2, nb);
}

/* ---- cross-entropy ------------------------------------------------------------------ */

struct ce_rows {
    const float *logits, *labels, *weights;
    int K;
    __device__ row_term row(size_t r) const
    {
        int c = row_class(labels, r, K);
        if (c < 0)
            return row_term{0, 0};
        const float *x = logits + r * K;
        double w = weights ? weights[c] : 1;
        return row_term{w * (logsumexp(x, 1, K) - x[c]), w};
    }
};

/* dlogits = scale w_c / sum_w (softmax(x) - onehot(c)); zero on ignored
 * rows, and everywhere when no weight counts */
__global__ void seg_ce_grad_kernel(float *dlogits, const float *logits, const float *labels,
                                   const float *weights, int rows, int K, float scale,
                                   const double *tot)
{
    double sw = tot[1];
    GRID_STRIDE(r, (size_t)rows)
    {
        int c = row_class(labels, r, K);
        const float *x = logits + r * K;
        float *g = dlogits + r * K;
        if (c < 0 || !(sw > 0)) {
            for (int k = 0; k < K; k++)
                g[k] = 0.0f;
            continue;
        }
        double w = weights ? weights[c] : 1;
        double lse = logsumexp(x, 1, K), f = scale * w / sw;
        for (int k = 0; k < K; k++)
            g[k] = (float)(f * (exp(x[k] - lse) - (k == c)));
    }
}

void cu_seg_ce(gd_backend *be, float *loss, float *dlogits, const float *logits,
               const float *labels, const float *weights, int rows, int K, float scale)
{
    cuda_ctx *c = enter(be);
#define CE_SHAPE "seg_ce(rows=%d, K=%d)", rows, K
    if (rows < 0 || K <= 0) {
        record(c, "cuda: seg_ce(rows=%d, K=%d): bad shape", rows, K);
        return;
    }
    unsigned nb = mean_blocks(rows);
    double *tot = loss_scratch(c, nb, 0, "seg_ce");
    if (!tot)
        return;
    weighted_mean(c, ce_rows{logits, labels, weights, K}, rows, loss, tot, nb);
    if (!launched(c, CE_SHAPE) || !dlogits || !rows)
        return;
    seg_ce_grad_kernel<<<grid_for((size_t)rows), NT, 0, c->stream>>>(dlogits, logits, labels,
                                                                    weights, rows, K, scale, tot);
    launched(c, CE_SHAPE);
#undef CE_SHAPE
}

/* ---- the prototype loss ------------------------------------------------------------- */

/* Per class c: lq[c] = logsumexp(protos[c] / T), hard[c] = the first
 * argmax of protos[c] (what the CPU computes again for every row). */
__global__ void proto_class_kernel(double *lq, int *hard, const float *protos, int K, int D,
                                   double inv_t)
{
    GRID_STRIDE(c, (size_t)K)
    {
        const float *p = protos + c * D;
        lq[c] = logsumexp(p, inv_t, D);
        hard[c] = argmax(p, D);
    }
}

struct proto_rows {
    const float *f, *protos, *labels;
    const double *lq;
    const int *hard;
    int D, K;
    double inv_t;
    float T, alpha;
    /* alpha T^2 KL(q || s) + (1 - alpha) CE(f, argmax p), weight 1 */
    __device__ row_term row(size_t r) const
    {
        int c = row_class(labels, r, K);
        if (c < 0)
            return row_term{0, 0};
        const float *x = f + r * D, *p = protos + (size_t)c * D;
        double ls = logsumexp(x, inv_t, D), l1 = logsumexp(x, 1, D), kl = 0;
        for (int d = 0; d < D; d++) {
            double logq = p[d] * inv_t - lq[c], logs = x[d] * inv_t - ls;
            kl += exp(logq) * (logq - logs);
        }
        return row_term{alpha * (double)T * T * kl + (1 - alpha) * (l1 - x[hard[c]]), 1};
    }
};

/* df = scale / n (alpha T (s - q) + (1 - alpha) (softmax(f) - onehot)),
 * n = tot[1] labelled rows; zero on unlabelled rows */
__global__ void proto_grad_kernel(float *df, proto_rows pr, int rows, float scale,
                                  const double *tot)
{
    int n = (int)tot[1];
    GRID_STRIDE(r, (size_t)rows)
    {
        int c = row_class(pr.labels, r, pr.K), D = pr.D;
        float *g = df + r * D;
        if (c < 0) {
            for (int d = 0; d < D; d++)
                g[d] = 0.0f;
            continue;
        }
        const float *x = pr.f + r * D, *p = pr.protos + (size_t)c * D;
        double inv_t = pr.inv_t, lq = pr.lq[c];
        double ls = logsumexp(x, inv_t, D), l1 = logsumexp(x, 1, D);
        int hard = pr.hard[c];
        float alpha = pr.alpha, T = pr.T;
        double f1 = scale / n; /* float / int, as the CPU */
        for (int d = 0; d < D; d++) {
            double q = exp(p[d] * inv_t - lq), s = exp(x[d] * inv_t - ls), s1 = exp(x[d] - l1);
            g[d] = (float)(f1 * (alpha * T * (s - q) + (1 - alpha) * (s1 - (d == hard))));
        }
    }
}

void cu_proto_loss(gd_backend *be, float *loss, float *df, const float *f, const float *protos,
                   const float *labels, int rows, int D, int K, float T, float alpha, float scale)
{
    cuda_ctx *c = enter(be);
#define PL_SHAPE "proto_loss(rows=%d, D=%d, K=%d)", rows, D, K
    if (rows < 0 || D <= 0 || K <= 0) {
        record(c, "cuda: proto_loss(rows=%d, D=%d, K=%d): bad shape", rows, D, K);
        return;
    }
    unsigned nb = mean_blocks(rows);
    double *tot = loss_scratch(c, nb, (size_t)K * (sizeof(double) + sizeof(int)), "proto_loss");
    if (!tot)
        return;
    double *lq = tot + 2 + 2 * (size_t)nb;
    int *hard = (int *)(lq + K);
    proto_class_kernel<<<grid_for((size_t)K), NT, 0, c->stream>>>(lq, hard, protos, K, D,
                                                                 1.0 / T);
    if (!launched(c, PL_SHAPE))
        return;
    proto_rows pr{f, protos, labels, lq, hard, D, K, 1.0 / T, T, alpha};
    weighted_mean(c, pr, rows, loss, tot, nb);
    if (!launched(c, PL_SHAPE) || !df || !rows)
        return;
    proto_grad_kernel<<<grid_for((size_t)rows), NT, 0, c->stream>>>(df, pr, rows, scale, tot);
    launched(c, PL_SHAPE);
#undef PL_SHAPE
}

/* ---- per-class sums ----------------------------------------------------------------- */

/* Columns i < K D: sums[i] (class i / D, dimension i % D); the K after
 * them: counts.  A row adds to the columns of its class only. */
struct class_sums_f {
    float *sums, *counts;
    const float *f, *labels;
    int D, K;
    __device__ double term(int r, size_t i) const
    {
        int c = row_class(labels, r, K);
        size_t kd = (size_t)K * D;
        if (i >= kd)
            return c == (int)(i - kd) ? 1.0 : 0.0;
        return c == (int)(i / D) ? (double)f[(size_t)r * D + i % D] : 0.0;
    }
    __device__ void write(size_t i, double s) const
    {
        size_t kd = (size_t)K * D;
        if (i >= kd)
            counts[i - kd] += (float)s;
        else
            sums[i] += (float)s;
    }
};

void cu_class_sums(gd_backend *be, float *sums, float *counts, const float *f,
                   const float *labels, int rows, int D, int K)
{
    cuda_ctx *c = enter(be);
    if (rows < 0 || D < 0 || K <= 0) {
        record(c, "cuda: class_sums(rows=%d, D=%d, K=%d): bad shape", rows, D, K);
        return;
    }
    colsum(c, class_sums_f{sums, counts, f, labels, D, K}, rows, (size_t)K * (D + 1),
           "class_sums");
}

} // namespace

void gdcu::fill_seg_ops(gd_backend *be)
{
    be->bilinear_fwd = cu_bilinear_fwd;
    be->bilinear_bwd = cu_bilinear_bwd;
    be->seg_ce = cu_seg_ce;
    be->proto_loss = cu_proto_loss;
    be->class_sums = cu_class_sums;
}
