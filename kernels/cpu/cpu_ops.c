/* cpu_ops.c: the CPU reference backend of ops.h.  CBLAS (OpenBLAS) for
 * every GEMM, OpenMP for the rest; float64 accumulators for row sums,
 * norms and the loss.  Written for clarity first: this is what the CUDA
 * backend is checked against. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "adam.h"
#include "cubic.h"
#include "ops.h"
#include "seg_ops.h"
#include "dmlp_ops.h"

/* Loops shorter than this stay on one thread: forking costs more. */
#define PAR_MIN 32768

typedef struct cpu_ctx {
    gd_cpu_timers t;
} cpu_ctx;

static double now(void) { return omp_get_wtime(); }

/* ---- memory ---------------------------------------------------------- */

static float *cpu_alloc(gd_backend *be, size_t n, gd_err *err)
{
    size_t bytes = (n ? n : 1) * sizeof(float);
    bytes = (bytes + 63) / 64 * 64; /* aligned_alloc wants a multiple */
    float *p = aligned_alloc(64, bytes);
    if (!p) {
        gd_errf(err, "cpu: out of memory allocating %zu floats", n);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

static void cpu_release(gd_backend *be, float *p) { free(p); }

static int cpu_upload(gd_backend *be, float *dst, const float *host, size_t n, gd_err *err)
{
    if (n)
        memcpy(dst, host, n * sizeof(float));
    return 0;
}

static int cpu_download(gd_backend *be, float *host, const float *src, size_t n, gd_err *err)
{
    if (n)
        memcpy(host, src, n * sizeof(float));
    return 0;
}

static int cpu_sync(gd_backend *be, gd_err *err) { return 0; }

static void cpu_fill(gd_backend *be, float *x, float v, size_t n)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] = v;
}

static void cpu_copy(gd_backend *be, float *dst, const float *src, size_t n)
{
    if (n && dst != src)
        memmove(dst, src, n * sizeof(float));
}

static void cpu_copy_rows(gd_backend *be, float *dst, size_t ds, const float *src, size_t ss,
                          int rows, size_t n)
{
    for (int r = 0; r < rows; r++)
        memmove(dst + r * ds, src + r * ss, n * sizeof(float));
}

/* ---- elementwise ------------------------------------------------------ */

static void cpu_add(gd_backend *be, float *y, const float *a, const float *b, size_t n)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

static void cpu_axpy(gd_backend *be, float *y, float alpha, const float *x, size_t n)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

static void cpu_scale(gd_backend *be, float *x, float alpha, size_t n)
{
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        x[i] *= alpha;
}

static void cpu_scale_rows(gd_backend *be, float *y, const float *x, const float *s, int rows,
                           size_t n)
{
    for (int r = 0; r < rows; r++)
        for (size_t i = 0; i < n; i++)
            y[(size_t)r * n + i] = x[(size_t)r * n + i] * s[r];
}

/* ---- GEMM ------------------------------------------------------------- */

/* One thread pool for everything: OpenBLAS runs single-threaded (set in
 * gd_backend_cpu) and the GEMM is split here over OpenMP threads, by
 * batch and by at most GEMM_BLOCKS row blocks of C (of GEMM_ROWS rows
 * or more, so that each call stays efficient).  Mixing OpenBLAS's own
 * pthreads with OpenMP regions made the two pools spin against each other
 * (20x slower on 2 cores).  The blocks depend on the shapes only, never on
 * the thread count, so the same calls (and the same bits) come out of any
 * number of threads: OpenBLAS picks its kernel by size. */
#define GEMM_ROWS 64
#define GEMM_BLOCKS 16
static void cpu_gemm(gd_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                     const float *A, int lda, long sa, const float *B, int ldb, long sb, float beta,
                     float *C, int ldc, long sc, int batch)
{
    cpu_ctx *ctx = be->ctx;
    double t0 = now();
    bool big = 2.0 * M * N * K * batch > 4e6;
    int blk = (M + GEMM_BLOCKS - 1) / GEMM_BLOCKS;
    blk = !big ? M : blk < GEMM_ROWS ? GEMM_ROWS : blk;
    int nblk = (M + blk - 1) / blk;
#pragma omp parallel for collapse(2) schedule(static) if (big)
    for (int i = 0; i < batch; i++)
        for (int j = 0; j < nblk; j++) {
            int m0 = j * blk, m = M - m0 < blk ? M - m0 : blk;
            const float *a = A + i * sa + (ta ? (size_t)m0 : (size_t)m0 * lda);
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                        tb ? CblasTrans : CblasNoTrans, m, N, K, alpha, a, lda, B + i * sb, ldb,
                        beta, C + i * sc + (size_t)m0 * ldc, ldc);
        }
    ctx->t.gemm += now() - t0;
}

static void cpu_bias_add(gd_backend *be, float *y, const float *bias, int rows, int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] += bias[i];
}

static void cpu_bias_grad(gd_backend *be, float *dbias, const float *dy, int rows, int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int r = 0; r < rows; r++)
            s += dy[(size_t)r * n + i];
        dbias[i] += (float)s;
    }
}

/* ---- activations and normalisation ------------------------------------ */

static void cpu_gelu_fwd(gd_backend *be, float *y, const float *x, size_t n)
{
#pragma omp parallel for if (n > PAR_MIN / 8)
    for (size_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

static void cpu_gelu_bwd(gd_backend *be, float *dx, const float *x, const float *dy, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for if (n > PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) {
        float cdf = 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] = dy[i] * (cdf + x[i] * pdf);
    }
}

static void cpu_layernorm_fwd(gd_backend *be, float *y, float *mean, float *rstd, const float *x,
                              const float *w, const float *b, int rows, int n, float eps)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        double s = 0, ss = 0;
        for (int i = 0; i < n; i++)
            s += xr[i];
        double mu = s / n;
        for (int i = 0; i < n; i++)
            ss += (xr[i] - mu) * (xr[i] - mu);
        double rs = 1.0 / sqrt(ss / n + eps);
        float *yr = y + (size_t)r * n;
        for (int i = 0; i < n; i++)
            yr[i] = (float)((xr[i] - mu) * rs) * w[i] + b[i];
        mean[r] = (float)mu;
        rstd[r] = (float)rs;
    }
}

/* dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)), dxh = dy w.  The weight
 * gradients are column sums: one thread per column block avoids races. */
static void cpu_layernorm_bwd(gd_backend *be, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const float *w, const float *mean, const float *rstd,
                              int rows, int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n, *dyr = dy + (size_t)r * n;
        double a = 0, bsum = 0;
        for (int i = 0; i < n; i++) {
            double xh = (xr[i] - mean[r]) * (double)rstd[r];
            double g = (double)dyr[i] * w[i];
            a += g;
            bsum += g * xh;
        }
        a /= n;
        bsum /= n;
        float *dxr = dx + (size_t)r * n;
        for (int i = 0; i < n; i++) {
            double xh = (xr[i] - mean[r]) * (double)rstd[r];
            double g = (double)dyr[i] * w[i];
            dxr[i] += (float)(rstd[r] * (g - a - xh * bsum));
        }
    }
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int i = 0; i < n; i++) {
        double sw = 0, sb = 0;
        for (int r = 0; r < rows; r++) {
            double xh = (x[(size_t)r * n + i] - mean[r]) * (double)rstd[r];
            sw += dy[(size_t)r * n + i] * xh;
            sb += dy[(size_t)r * n + i];
        }
        dw[i] += (float)sw;
        db[i] += (float)sb;
    }
}

/* The L2 norm of one row, summed in float64 in index order (the order is
 * part of the backend's bitwise reproducibility). */
static double row_norm(const float *x, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    return sqrt(ss);
}

static void cpu_l2norm_fwd(gd_backend *be, float *y, float *norms, const float *x, int rows,
                           int n, float eps)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        double nrm = row_norm(xr, n);
        double d = nrm > eps ? nrm : eps;
        for (int i = 0; i < n; i++)
            y[(size_t)r * n + i] = (float)(xr[i] / d);
        norms[r] = (float)nrm;
    }
}

/* Where the norm is above eps: dx = (dy - y (y . dy)) / ||x||; below it the
 * map is x / eps, linear. */
static void cpu_l2norm_bwd(gd_backend *be, float *dx, const float *dy, const float *y,
                           const float *norms, int rows, int n, float eps)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *yr = y + (size_t)r * n, *dyr = dy + (size_t)r * n;
        float *dxr = dx + (size_t)r * n;
        if (norms[r] <= eps) {
            for (int i = 0; i < n; i++)
                dxr[i] = dyr[i] / eps;
            continue;
        }
        double dot = 0;
        for (int i = 0; i < n; i++)
            dot += (double)yr[i] * dyr[i];
        for (int i = 0; i < n; i++)
            dxr[i] = (float)((dyr[i] - yr[i] * dot) / norms[r]);
    }
}

static void cpu_weightnorm_fwd(gd_backend *be, float *w, float *norms, const float *g,
                               const float *v, int rows, int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *vr = v + (size_t)r * n;
        double nrm = row_norm(vr, n);
        float scale = (float)(g[r] / nrm);
        for (int i = 0; i < n; i++)
            w[(size_t)r * n + i] = scale * vr[i];
        norms[r] = (float)nrm;
    }
}

/* With u = v / ||v||: dg = dw . u; dv = (g / ||v||) (dw - u (dw . u)). */
static void cpu_weightnorm_bwd(gd_backend *be, float *dg, float *dv, const float *dw,
                               const float *g, const float *v, const float *norms, int rows, int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *vr = v + (size_t)r * n, *dwr = dw + (size_t)r * n;
        double nrm = norms[r], dot = 0;
        for (int i = 0; i < n; i++)
            dot += (double)dwr[i] * vr[i];
        dot /= nrm;
        if (dg)
            dg[r] += (float)dot;
        float a = (float)(g[r] / nrm), b = (float)(dot / nrm);
        float *dvr = dv + (size_t)r * n;
        for (int i = 0; i < n; i++)
            dvr[i] += a * (dwr[i] - vr[i] * b);
    }
}

static void softmax_row(float *y, const float *x, double inv_temp, int n)
{
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++)
        if (x[i] * inv_temp > mx)
            mx = x[i] * inv_temp;
    for (int i = 0; i < n; i++)
        s += exp(x[i] * inv_temp - mx);
    for (int i = 0; i < n; i++)
        y[i] = (float)(exp(x[i] * inv_temp - mx) / s);
}

static void cpu_softmax_fwd(gd_backend *be, float *y, const float *x, float inv_temp, int rows,
                            int n)
{
#pragma omp parallel for if ((size_t)rows * n > PAR_MIN)
    for (int r = 0; r < rows; r++)
        softmax_row(y + (size_t)r * n, x + (size_t)r * n, inv_temp, n);
}

/* ---- ViT pieces -------------------------------------------------------- */

static void cpu_patchify(gd_backend *be, float *out, const float *img, int B, int C, int H, int W,
                         int p)
{
    int gh = H / p, gw = W / p, cols = C * p * p;
#pragma omp parallel for collapse(2) if ((size_t)B * C * H * W > PAR_MIN)
    for (int b = 0; b < B; b++)
        for (int py = 0; py < gh; py++)
            for (int px = 0; px < gw; px++) {
                float *o = out + ((size_t)b * gh * gw + (size_t)py * gw + px) * cols;
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < p; ky++)
                        memcpy(o + (c * p + ky) * p,
                               img + (((size_t)b * C + c) * H + py * p + ky) * W + px * p,
                               p * sizeof(float));
            }
}

static void cpu_tokens_fwd(gd_backend *be, float *x, const float *patches, const float *cls,
                           const float *pos, int B, int np, int D)
{
    int T = np + 1;
#pragma omp parallel for if ((size_t)B * T * D > PAR_MIN)
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * T * D;
        for (int i = 0; i < D; i++)
            xb[i] = cls[i] + pos[i];
        for (int t = 1; t < T; t++)
            for (int i = 0; i < D; i++)
                xb[(size_t)t * D + i] =
                    patches[((size_t)b * np + t - 1) * D + i] + pos[(size_t)t * D + i];
    }
}

static void cpu_tokens_bwd(gd_backend *be, float *dpatches, float *dcls, float *dpos,
                           const float *dx, int B, int np, int D)
{
    int T = np + 1;
    if (dpatches)
#pragma omp parallel for if ((size_t)B * T * D > PAR_MIN)
        for (int b = 0; b < B; b++)
            memcpy(dpatches + (size_t)b * np * D, dx + ((size_t)b * T + 1) * D,
                   (size_t)np * D * sizeof(float));
#pragma omp parallel for if ((size_t)B * T * D > PAR_MIN)
    for (int j = 0; j < T * D; j++) {
        double s = 0;
        for (int b = 0; b < B; b++)
            s += dx[(size_t)b * T * D + j];
        dpos[j] += (float)s;
        if (j < D)
            dcls[j] += (float)s;
    }
}

static void cpu_posinterp_fwd(gd_backend *be, float *out, const float *pos, int g, int oh, int ow,
                              double sh, double sw, int D)
{
    memcpy(out, pos, (size_t)D * sizeof(float));
    const float *grid = pos + D;
#pragma omp parallel for if ((size_t)oh * ow * D * 16 > PAR_MIN)
    for (int y = 0; y < oh; y++) {
        int iy[4], ix[4];
        double wy[4], wx[4];
        gd_cubic_taps(y, sh, g, iy, wy);
        for (int x = 0; x < ow; x++) {
            gd_cubic_taps(x, sw, g, ix, wx);
            float *o = out + (1 + (size_t)y * ow + x) * D;
            for (int d = 0; d < D; d++)
                o[d] = gd_cubic_gather(grid, g, D, d, iy, wy, ix, wx);
        }
    }
}

/* The adjoint of the forward map.  Serial over output pixels because many
 * of them scatter into the same source rows; parallel over channels. */
static void cpu_posinterp_bwd(gd_backend *be, float *dpos, const float *dout, int g, int oh,
                              int ow, double sh, double sw, int D)
{
    for (int d = 0; d < D; d++)
        dpos[d] += dout[d];
    float *grid = dpos + D;
#pragma omp parallel for if ((size_t)oh * ow * D * 16 > PAR_MIN)
    for (int d = 0; d < D; d++)
        gd_cubic_scatter(grid, dout, g, oh, ow, sh, sw, D, d);
}

/* One (batch, head) pair per task; q, k, v are strided views of qkv. */
static void cpu_attention_fwd(gd_backend *be, float *out, float *att, const float *qkv, int B,
                              int T, int H, int hd)
{
    cpu_ctx *ctx = be->ctx;
    double t0 = now();
    int D = H * hd, ld = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) if ((double)B * H * T * T * hd > 1e5)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *q = qkv + (size_t)b * T * ld + h * hd;
            const float *k = q + D, *v = q + 2 * D;
            float *P = att + ((size_t)b * H + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, q, ld, k, ld,
                        0.0f, P, T);
            for (int r = 0; r < T; r++)
                softmax_row(P + (size_t)r * T, P + (size_t)r * T, 1.0, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, v, ld,
                        0.0f, out + (size_t)b * T * D + h * hd, D);
        }
    ctx->t.attention += now() - t0;
}

static void cpu_attention_bwd(gd_backend *be, float *dqkv, float *scratch, const float *dout,
                              const float *qkv, const float *att, int B, int T, int H, int hd)
{
    cpu_ctx *ctx = be->ctx;
    double t0 = now();
    int D = H * hd, ld = 3 * D;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) if ((double)B * H * T * T * hd > 1e5)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t base = (size_t)b * T * ld + h * hd;
            const float *q = qkv + base, *k = q + D, *v = q + 2 * D;
            float *dq = dqkv + base, *dk = dq + D, *dv = dq + 2 * D;
            const float *dO = dout + (size_t)b * T * D + h * hd;
            const float *P = att + ((size_t)b * H + h) * T * T;
            float *dS = scratch + ((size_t)b * H + h) * T * T;
            /* dP = dO v^T, then the softmax adjoint in place */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, D, v, ld,
                        0.0f, dS, T);
            for (int r = 0; r < T; r++) {
                const float *pr = P + (size_t)r * T;
                float *sr = dS + (size_t)r * T;
                double dot = 0;
                for (int c = 0; c < T; c++)
                    dot += (double)pr[c] * sr[c];
                for (int c = 0; c < T; c++)
                    sr[c] = (float)(pr[c] * (sr[c] - dot));
            }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO, D,
                        0.0f, dv, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dS, T, k, ld,
                        0.0f, dq, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dS, T, q, ld,
                        0.0f, dk, ld);
        }
    ctx->t.attention += now() - t0;
}

/* ---- reductions ---------------------------------------------------------- */

/* Sums in a fixed order whatever the thread count (OpenMP's reduction
 * clause combines partial sums in arrival order, so results would change
 * from run to run): fixed chunks summed in parallel, then the chunk sums
 * in order.  `sq` sums squares. */
#define RED_CHUNK 8192
static double fixed_order_sum(const float *x, size_t n, int sq)
{
    size_t nc = (n + RED_CHUNK - 1) / RED_CHUNK;
    double stack[64], *part = nc <= 64 ? stack : malloc(nc * sizeof(double));
    if (!part) { /* no memory for partials: serial, still in a fixed order */
        double s = 0;
        for (size_t i = 0; i < n; i++)
            s += sq ? (double)x[i] * x[i] : x[i];
        return s;
    }
#pragma omp parallel for if (n > PAR_MIN)
    for (size_t c = 0; c < nc; c++) {
        size_t end = (c + 1) * RED_CHUNK < n ? (c + 1) * RED_CHUNK : n;
        double s = 0;
        for (size_t i = c * RED_CHUNK; i < end; i++)
            s += sq ? (double)x[i] * x[i] : x[i];
        part[c] = s;
    }
    double s = 0;
    for (size_t c = 0; c < nc; c++)
        s += part[c];
    if (part != stack)
        free(part);
    return s;
}

/* ---- DINO loss ---------------------------------------------------------- */

static void cpu_dino_teacher_probs(gd_backend *be, float *q, const float *t, const float *center,
                                   float temp, int rows, int K)
{
#pragma omp parallel for if ((size_t)rows * K > PAR_MIN)
    for (int r = 0; r < rows; r++) {
        const float *tr = t + (size_t)r * K;
        float *qr = q + (size_t)r * K;
        double mx = -INFINITY, s = 0;
        for (int k = 0; k < K; k++) {
            double z = (double)(tr[k] - center[k]) / temp;
            mx = z > mx ? z : mx;
        }
        for (int k = 0; k < K; k++)
            s += exp((double)(tr[k] - center[k]) / temp - mx);
        for (int k = 0; k < K; k++)
            qr[k] = (float)(exp((double)(tr[k] - center[k]) / temp - mx) / s);
    }
}

/* Each student row meets every teacher view but its own.  With p the
 * student softmax and sum_k q = 1, the gradient of one pair's cross-entropy
 * with respect to the student logits is (p - q) / temp. */
static void cpu_dino_loss(gd_backend *be, float *loss, float *ds, const float *s, const float *q,
                          int G, int S, int B, int K, float student_temp)
{
    int npairs = 0;
    for (int v = 0; v < S; v++)
        for (int i = 0; i < G; i++)
            npairs += v != i;
    double inv_t = 1.0 / student_temp, w = 1.0 / ((double)npairs * B);
    /* per-row terms, summed in order below: the same bits for any thread count */
    double *rows = malloc((size_t)S * B * sizeof(double));
    if (!rows) {
        loss[0] = NAN; /* reported as a non-finite loss by the caller */
        return;
    }
#pragma omp parallel for collapse(2) if ((size_t)S * B * K > PAR_MIN / 4)
    for (int v = 0; v < S; v++)
        for (int b = 0; b < B; b++) {
            double total = 0;
            const float *sr = s + ((size_t)v * B + b) * K;
            double mx = -INFINITY, z = 0;
            for (int k = 0; k < K; k++)
                mx = sr[k] * inv_t > mx ? sr[k] * inv_t : mx;
            for (int k = 0; k < K; k++)
                z += exp(sr[k] * inv_t - mx);
            double lse = mx + log(z);
            int nq = 0;
            for (int i = 0; i < G; i++) {
                if (i == v)
                    continue;
                nq++;
                const float *qr = q + ((size_t)i * B + b) * K;
                double ce = 0;
                for (int k = 0; k < K; k++)
                    ce -= qr[k] * (sr[k] * inv_t - lse);
                total += ce * w;
            }
            rows[v * B + b] = total;
            if (!ds)
                continue;
            float *dr = ds + ((size_t)v * B + b) * K;
            for (int k = 0; k < K; k++) {
                double qs = 0;
                for (int i = 0; i < G; i++)
                    if (i != v)
                        qs += q[((size_t)i * B + b) * K + k];
                double p = exp(sr[k] * inv_t - lse);
                dr[k] = (float)((nq * p - qs) * inv_t * w);
            }
        }
    double total = 0;
    for (int r = 0; r < S * B; r++)
        total += rows[r];
    free(rows);
    loss[0] = (float)total;
}

static void cpu_center_update(gd_backend *be, float *center, const float *t, int rows, int K,
                              float m)
{
#pragma omp parallel for if ((size_t)rows * K > PAR_MIN)
    for (int k = 0; k < K; k++) {
        double s = 0;
        for (int r = 0; r < rows; r++)
            s += t[(size_t)r * K + k];
        center[k] = (float)(center[k] * (double)m + s / rows * (1.0 - (double)m));
    }
}

/* ---- optimisation -------------------------------------------------------- */

static int cpu_clip_per_tensor(gd_backend *be, float *buf, const size_t *off, const size_t *len,
                               int n, float clip, double *norms, gd_err *err)
{
    for (int i = 0; i < n; i++) {
        norms[i] = sqrt(fixed_order_sum(buf + off[i], len[i], 1));
        double coef = clip / (norms[i] + 1e-6);
        if (clip > 0 && coef < 1)
            cpu_scale(be, buf + off[i], (float)coef, len[i]);
    }
    return 0;
}

/* torch.optim.AdamW (single-tensor path) operation for operation. */
static void cpu_adamw(gd_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                      float lr, float wd, float beta1, float beta2, float eps, int step)
{
    gd_adam_consts k = gd_adam_consts_of(lr, wd, beta1, beta2, step);
#pragma omp parallel for simd if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        p[i] = gd_adamw_elem(p[i], g[i], &m[i], &v[i], beta1, beta2, eps, k);
}

static void cpu_ema(gd_backend *be, float *teacher, const float *student, float m, size_t n)
{
#pragma omp parallel for simd if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        teacher[i] = gd_ema_elem(teacher[i], student[i], m);
}

/* Tensor by tensor, each in one pass: the EMA of the gap before it, then
 * AdamW and the EMA of the updated values together. */
static void cpu_adamw_ema(gd_backend *be, float *p, const float *g, float *m, float *v,
                          float *teacher, size_t n, const gd_adam_tensor *t, int nt, float lr,
                          float beta1, float beta2, float eps, float momentum)
{
    size_t at = 0;
    for (int j = 0; j < nt; j++) {
        cpu_ema(be, teacher + at, p + at, momentum, t[j].off - at);
        gd_adam_consts k = gd_adam_consts_of(lr, t[j].wd, beta1, beta2, t[j].step);
        size_t lo = t[j].off, hi = t[j].off + t[j].n;
#pragma omp parallel for simd if (hi - lo > PAR_MIN)
        for (size_t i = lo; i < hi; i++) {
            p[i] = gd_adamw_elem(p[i], g[i], &m[i], &v[i], beta1, beta2, eps, k);
            teacher[i] = gd_ema_elem(teacher[i], p[i], momentum);
        }
        at = hi;
    }
    cpu_ema(be, teacher + at, p + at, momentum, n - at);
}

static void cpu_sum(gd_backend *be, float *out, const float *x, size_t n)
{
    out[0] = (float)fixed_order_sum(x, n, 0);
}

static int cpu_all_finite(gd_backend *be, const float *x, size_t n, int *finite, gd_err *err)
{
    int bad = 0;
#pragma omp parallel for reduction(| : bad) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++)
        bad |= !isfinite(x[i]);
    *finite = !bad;
    return 0;
}

/* ---- the table ------------------------------------------------------------ */

static cpu_ctx the_ctx;

static gd_backend cpu_backend = {
    .name = "cpu",
    .ctx = &the_ctx,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .host_alloc = cpu_alloc, /* host memory is all the CPU has */
    .host_free = cpu_release,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .fill = cpu_fill,
    .copy = cpu_copy,
    .copy_rows = cpu_copy_rows,
    .add = cpu_add,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .scale_rows = cpu_scale_rows,
    .gemm = cpu_gemm,
    .bias_add = cpu_bias_add,
    .bias_grad = cpu_bias_grad,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .l2norm_fwd = cpu_l2norm_fwd,
    .l2norm_bwd = cpu_l2norm_bwd,
    .weightnorm_fwd = cpu_weightnorm_fwd,
    .weightnorm_bwd = cpu_weightnorm_bwd,
    .softmax_fwd = cpu_softmax_fwd,
    .patchify = cpu_patchify,
    .tokens_fwd = cpu_tokens_fwd,
    .tokens_bwd = cpu_tokens_bwd,
    .posinterp_fwd = cpu_posinterp_fwd,
    .posinterp_bwd = cpu_posinterp_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .dino_teacher_probs = cpu_dino_teacher_probs,
    .dino_loss = cpu_dino_loss,
    .center_update = cpu_center_update,
    .clip_per_tensor = cpu_clip_per_tensor,
    .adamw = cpu_adamw,
    .ema = cpu_ema,
    .adamw_ema = cpu_adamw_ema,
    .sum = cpu_sum,
    .all_finite = cpu_all_finite,
    /* segmentation: kernels/cpu/seg_ops.c */
    .bilinear_fwd = cpu_bilinear_fwd,
    .bilinear_bwd = cpu_bilinear_bwd,
    .seg_ce = cpu_seg_ce,
    .proto_loss = cpu_proto_loss,
    .class_sums = cpu_class_sums,
    /* deformable MLP: kernels/cpu/dmlp_ops.c */
    .dwconv3_fwd = cpu_dwconv3_fwd,
    .dwconv3_bwd = cpu_dwconv3_bwd,
    .deform_sample_fwd = cpu_deform_sample_fwd,
    .deform_sample_bwd = cpu_deform_sample_bwd,
};

gd_backend *gd_backend_cpu(void)
{
    static int once;
    if (!once) { /* see cpu_gemm */
        openblas_set_num_threads(1);
        once = 1;
    }
    return &cpu_backend;
}

gd_cpu_timers gd_cpu_timers_get(const gd_backend *be)
{
    if (be != &cpu_backend)
        return (gd_cpu_timers){0, 0};
    return ((const cpu_ctx *)be->ctx)->t;
}

void gd_cpu_timers_reset(gd_backend *be)
{
    if (be == &cpu_backend)
        ((cpu_ctx *)be->ctx)->t = (gd_cpu_timers){0, 0};
}
