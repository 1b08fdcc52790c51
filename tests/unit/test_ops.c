/* The CPU backend, op by op: forward against a float64 reference written
 * here from the definitions, backward against central finite differences
 * of that float64 reference.  Data cross the seam only through
 * upload/download, as model code must. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "rng.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------ */

static gd_backend *be(void) { return gd_backend_cpu(); }

static float *dev_rand(rng *r, size_t n, double sd, float *host_copy)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = (float)(rng_normal(r) * sd);
    float *d = be()->alloc(be(), n, NULL);
    be()->upload(be(), d, h, n, NULL);
    if (host_copy)
        memcpy(host_copy, h, n * sizeof(float));
    free(h);
    return d;
}

static float *dev_zeros(size_t n) { return be()->alloc(be(), n, NULL); }

static float *host_of(const float *d, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    be()->download(be(), h, d, n, NULL);
    return h;
}

static double *to_f64(const float *d, size_t n)
{
    float *h = host_of(d, n);
    double *x = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++)
        x[i] = h[i];
    free(h);
    return x;
}

/* max |a - b| / max(1, max |b|): one number per comparison */
static double max_err(const float *a, const double *b, size_t n)
{
    double e = 0, s = 1;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    return e / s;
}

/* A scalar function of x for finite differences: L(x) = sum dy . f(x). */
typedef double (*scalar_fn)(const double *x, void *ctx);

static void fd_grad(scalar_fn f, double *x, size_t n, void *ctx, double *g)
{
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * fmax(1.0, fabs(x0));
        x[i] = x0 + h;
        double fp = f(x, ctx);
        x[i] = x0 - h;
        double fm = f(x, ctx);
        x[i] = x0;
        g[i] = (fp - fm) / (2 * h);
    }
}

static double dotd(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- GEMM ----------------------------------------------------------------- */

static void ref_gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double *A, int lda,
                     const double *B, int ldb, double beta, double *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
            C[i * ldc + j] = alpha * s + beta * C[i * ldc + j];
        }
}

TEST(ops_gemm_transposes_batches_odd_sizes)
{
    rng r;
    rng_init(&r, 1, 0, 0, 0);
    /* the last two are big enough for the backend to split rows over
     * threads (one with a batch, one without) */
    int shapes[][4] = {{1, 1, 1, 1}, {3, 5, 7, 2}, {17, 9, 33, 3}, {64, 48, 31, 1},
                       {301, 70, 120, 1}, {97, 65, 190, 3}};
    for (size_t s = 0; s < 6; s++)
        for (int t = 0; t < 4; t++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], batch = shapes[s][3];
            bool ta = t & 1, tb = t & 2;
            int lda = ta ? M : K, ldb = tb ? K : N;
            long sa = (long)M * K, sb = (long)K * N, sc = (long)M * N;
            float *A = dev_rand(&r, sa * batch, 1, NULL), *B = dev_rand(&r, sb * batch, 1, NULL);
            float *C = dev_rand(&r, sc * batch, 1, NULL);
            double *a = to_f64(A, sa * batch), *b = to_f64(B, sb * batch), *c = to_f64(C, sc * batch);
            be()->gemm(be(), ta, tb, M, N, K, 0.5f, A, lda, sa, B, ldb, sb, 2.0f, C, N, sc, batch);
            for (int i = 0; i < batch; i++)
                ref_gemm(ta, tb, M, N, K, 0.5, a + i * sa, lda, b + i * sb, ldb, 2.0, c + i * sc, N);
            float *got = host_of(C, sc * batch);
            double e = max_err(got, c, sc * batch);
            free(got), free(a), free(b), free(c);
            be()->release(be(), A), be()->release(be(), B), be()->release(be(), C);
            CHECK_MSG(e < 1e-5, "M=%d N=%d K=%d ta=%d tb=%d: error %g", M, N, K, ta, tb, e);
        }
}

TEST(ops_bias_add_and_grad)
{
    rng r;
    rng_init(&r, 2, 0, 0, 0);
    int rows = 13, n = 7;
    float *y = dev_rand(&r, rows * n, 1, NULL), *b = dev_rand(&r, n, 1, NULL);
    double *y0 = to_f64(y, rows * n), *b0 = to_f64(b, n);
    be()->bias_add(be(), y, b, rows, n);
    float *db = dev_rand(&r, n, 1, NULL);
    double *db0 = to_f64(db, n);
    be()->bias_grad(be(), db, y, rows, n);
    float *gy = host_of(y, rows * n), *gdb = host_of(db, n);
    double ref[13 * 7], refdb[7];
    for (int i = 0; i < n; i++)
        refdb[i] = db0[i];
    for (int k = 0; k < rows * n; k++) {
        ref[k] = y0[k] + b0[k % n];
        refdb[k % n] += ref[k];
    }
    CHECK(max_err(gy, ref, rows * n) < 1e-6);
    CHECK(max_err(gdb, refdb, n) < 1e-5);
    free(y0), free(b0), free(db0), free(gy), free(gdb);
    be()->release(be(), y), be()->release(be(), b), be()->release(be(), db);
}

/* ---- GELU ------------------------------------------------------------------- */

static double ref_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

typedef struct {
    const double *dy;
    size_t n;
} gelu_ctx;

static double gelu_L(const double *x, void *vc)
{
    gelu_ctx *c = vc;
    double s = 0;
    for (size_t i = 0; i < c->n; i++)
        s += c->dy[i] * ref_gelu(x[i]);
    return s;
}

TEST(ops_gelu_forward_backward)
{
    rng r;
    rng_init(&r, 3, 0, 0, 0);
    size_t n = 301;
    float *x = dev_rand(&r, n, 2.5, NULL), *dy = dev_rand(&r, n, 1, NULL);
    float *y = dev_zeros(n), *dx = dev_zeros(n);
    be()->gelu_fwd(be(), y, x, n);
    be()->gelu_bwd(be(), dx, x, dy, n);
    double *xd = to_f64(x, n), *dyd = to_f64(dy, n), ref[301], g[301];
    for (size_t i = 0; i < n; i++)
        ref[i] = ref_gelu(xd[i]);
    gelu_ctx c = {dyd, n};
    fd_grad(gelu_L, xd, n, &c, g);
    float *gy = host_of(y, n), *gdx = host_of(dx, n);
    double ey = max_err(gy, ref, n), ex = max_err(gdx, g, n);
    free(xd), free(dyd), free(gy), free(gdx);
    be()->release(be(), x), be()->release(be(), dy), be()->release(be(), y), be()->release(be(), dx);
    CHECK_MSG(ey < 1e-6, "forward %g", ey);
    CHECK_MSG(ex < 1e-5, "backward %g", ex);
}

/* ---- LayerNorm ---------------------------------------------------------------- */

typedef struct {
    int rows, n;
    const double *dy;
    double eps;
} ln_ctx;

/* x, w, b packed in one vector so one finite-difference sweep covers all */
static void ref_layernorm(const double *x, const double *w, const double *b, int rows, int n,
                          double eps, double *y)
{
    for (int r = 0; r < rows; r++) {
        double mu = 0, var = 0;
        for (int i = 0; i < n; i++)
            mu += x[r * n + i] / n;
        for (int i = 0; i < n; i++)
            var += (x[r * n + i] - mu) * (x[r * n + i] - mu) / n;
        for (int i = 0; i < n; i++)
            y[r * n + i] = (x[r * n + i] - mu) / sqrt(var + eps) * w[i] + b[i];
    }
}

static double ln_L(const double *p, void *vc)
{
    ln_ctx *c = vc;
    int rn = c->rows * c->n;
    double *y = malloc(rn * sizeof(double));
    ref_layernorm(p, p + rn, p + rn + c->n, c->rows, c->n, c->eps, y);
    double s = dotd(y, c->dy, rn);
    free(y);
    return s;
}

TEST(ops_layernorm_forward_backward)
{
    rng r;
    rng_init(&r, 4, 0, 0, 0);
    int shapes[][2] = {{1, 5}, {7, 13}, {4, 64}};
    for (int s = 0; s < 3; s++) {
        int rows = shapes[s][0], n = shapes[s][1], rn = rows * n;
        float *x = dev_rand(&r, rn, 3, NULL), *w = dev_rand(&r, n, 1, NULL), *b = dev_rand(&r, n, 1, NULL);
        float *dy = dev_rand(&r, rn, 1, NULL), *y = dev_zeros(rn);
        float *mean = dev_zeros(rows), *rstd = dev_zeros(rows);
        be()->layernorm_fwd(be(), y, mean, rstd, x, w, b, rows, n, 1e-6f);
        /* gradients accumulate: start them from a known nonzero value */
        float *dp = dev_rand(&r, rn + 2 * n, 1, NULL);
        double *dp0 = to_f64(dp, rn + 2 * n);
        be()->layernorm_bwd(be(), dp, dp + rn, dp + rn + n, dy, x, w, mean, rstd, rows, n);
        double *p = malloc((rn + 2 * n) * sizeof(double)), *g = malloc((rn + 2 * n) * sizeof(double));
        double *xd = to_f64(x, rn), *wd = to_f64(w, n), *bd = to_f64(b, n), *dyd = to_f64(dy, rn);
        memcpy(p, xd, rn * sizeof(double));
        memcpy(p + rn, wd, n * sizeof(double));
        memcpy(p + rn + n, bd, n * sizeof(double));
        double *ref = malloc(rn * sizeof(double));
        ref_layernorm(xd, wd, bd, rows, n, 1e-6, ref);
        ln_ctx c = {rows, n, dyd, 1e-6};
        fd_grad(ln_L, p, rn + 2 * n, &c, g);
        for (int i = 0; i < rn + 2 * n; i++)
            g[i] += dp0[i];
        float *gy = host_of(y, rn), *gdp = host_of(dp, rn + 2 * n);
        double ey = max_err(gy, ref, rn), eg = max_err(gdp, g, rn + 2 * n);
        free(p), free(g), free(xd), free(wd), free(bd), free(dyd), free(ref), free(gy), free(gdp), free(dp0);
        float *bufs[] = {x, w, b, dy, y, mean, rstd, dp};
        for (int i = 0; i < 8; i++)
            be()->release(be(), bufs[i]);
        CHECK_MSG(ey < 2e-6, "rows %d n %d: forward %g", rows, n, ey);
        CHECK_MSG(eg < 1e-4, "rows %d n %d: backward %g", rows, n, eg);
    }
}

/* ---- L2 normalisation and weight normalisation ------------------------------------ */

typedef struct {
    int rows, n;
    const double *dy;
    const double *g; /* weight norm gains, NULL for l2norm */
} norm_ctx;

/* y = g x / ||x|| per row (g = 1 for F.normalize well above eps) */
static void ref_rownorm(const double *x, const double *g, int rows, int n, double *y)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += x[r * n + i] * x[r * n + i];
        for (int i = 0; i < n; i++)
            y[r * n + i] = (g ? g[r] : 1.0) * x[r * n + i] / sqrt(s);
    }
}

static double norm_L(const double *p, void *vc)
{
    norm_ctx *c = vc;
    int rn = c->rows * c->n;
    double *y = malloc(rn * sizeof(double));
    ref_rownorm(p, c->g ? p + rn : NULL, c->rows, c->n, y);
    double s = dotd(y, c->dy, rn);
    free(y);
    return s;
}

TEST(ops_l2norm_forward_backward)
{
    rng r;
    rng_init(&r, 5, 0, 0, 0);
    int rows = 6, n = 11, rn = rows * n;
    float *x = dev_rand(&r, rn, 1, NULL), *dy = dev_rand(&r, rn, 1, NULL);
    float *y = dev_zeros(rn), *nr = dev_zeros(rows), *dx = dev_zeros(rn);
    be()->l2norm_fwd(be(), y, nr, x, rows, n, 1e-12f);
    be()->l2norm_bwd(be(), dx, dy, y, nr, rows, n, 1e-12f);
    double *xd = to_f64(x, rn), *dyd = to_f64(dy, rn), ref[66], g[66];
    ref_rownorm(xd, NULL, rows, n, ref);
    norm_ctx c = {rows, n, dyd, NULL};
    fd_grad(norm_L, xd, rn, &c, g);
    float *gy = host_of(y, rn), *gdx = host_of(dx, rn);
    double ey = max_err(gy, ref, rn), ex = max_err(gdx, g, rn);
    free(xd), free(dyd), free(gy), free(gdx);
    float *bufs[] = {x, dy, y, nr, dx};
    for (int i = 0; i < 5; i++)
        be()->release(be(), bufs[i]);
    CHECK_MSG(ey < 1e-6, "forward %g", ey);
    CHECK_MSG(ex < 1e-5, "backward %g", ex);
}

TEST(ops_l2norm_zero_row_is_finite)
{
    float *x = dev_zeros(4), *y = dev_zeros(4), *nr = dev_zeros(1), *dx = dev_zeros(4);
    float *dy = dev_zeros(4);
    be()->fill(be(), dy, 1.0f, 4);
    be()->l2norm_fwd(be(), y, nr, x, 1, 4, 1e-12f);
    be()->l2norm_bwd(be(), dx, dy, y, nr, 1, 4, 1e-12f);
    float *gy = host_of(y, 4), *gdx = host_of(dx, 4);
    int ok = gy[0] == 0 && isfinite(gdx[0]);
    free(gy), free(gdx);
    float *bufs[] = {x, y, nr, dx, dy};
    for (int i = 0; i < 5; i++)
        be()->release(be(), bufs[i]);
    CHECK(ok);
}

TEST(ops_weightnorm_forward_backward)
{
    rng r;
    rng_init(&r, 6, 0, 0, 0);
    int rows = 9, n = 5, rn = rows * n;
    float *v = dev_rand(&r, rn, 1, NULL), *gain = dev_rand(&r, rows, 1, NULL);
    float *dw = dev_rand(&r, rn, 1, NULL), *w = dev_zeros(rn), *nr = dev_zeros(rows);
    float *dp = dev_rand(&r, rn + rows, 1, NULL); /* [dv | dg], accumulated into */
    double *dp0 = to_f64(dp, rn + rows);
    be()->weightnorm_fwd(be(), w, nr, gain, v, rows, n);
    be()->weightnorm_bwd(be(), dp + rn, dp, dw, gain, v, nr, rows, n);
    double *p = malloc((rn + rows) * sizeof(double)), g[54], ref[45];
    double *vd = to_f64(v, rn), *gd = to_f64(gain, rows), *dwd = to_f64(dw, rn);
    memcpy(p, vd, rn * sizeof(double));
    memcpy(p + rn, gd, rows * sizeof(double));
    ref_rownorm(vd, gd, rows, n, ref);
    norm_ctx c = {rows, n, dwd, gd};
    fd_grad(norm_L, p, rn + rows, &c, g);
    for (int i = 0; i < rn + rows; i++)
        g[i] += dp0[i];
    float *gw = host_of(w, rn), *gdp = host_of(dp, rn + rows);
    double ew = max_err(gw, ref, rn), eg = max_err(gdp, g, rn + rows);
    free(p), free(vd), free(gd), free(dwd), free(gw), free(gdp), free(dp0);
    float *bufs[] = {v, gain, dw, w, nr, dp};
    for (int i = 0; i < 6; i++)
        be()->release(be(), bufs[i]);
    CHECK_MSG(ew < 1e-6, "forward %g", ew);
    CHECK_MSG(eg < 1e-5, "backward %g", eg);
}

TEST(ops_softmax_rows)
{
    rng r;
    rng_init(&r, 7, 0, 0, 0);
    int rows = 5, n = 37;
    float *x = dev_rand(&r, rows * n, 10, NULL), *y = dev_zeros(rows * n);
    be()->softmax_fwd(be(), y, x, 1 / 0.1f, rows, n);
    double *xd = to_f64(x, rows * n), ref[185];
    for (int rr = 0; rr < rows; rr++) {
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < n; i++)
            mx = fmax(mx, xd[rr * n + i] / 0.1);
        for (int i = 0; i < n; i++)
            s += exp(xd[rr * n + i] / 0.1 - mx);
        for (int i = 0; i < n; i++)
            ref[rr * n + i] = exp(xd[rr * n + i] / 0.1 - mx) / s;
    }
    float *gy = host_of(y, rows * n);
    double e = max_err(gy, ref, rows * n);
    free(xd), free(gy);
    be()->release(be(), x), be()->release(be(), y);
    CHECK_MSG(e < 1e-6, "error %g", e);
}

/* ---- ViT pieces ------------------------------------------------------------------ */

TEST(ops_patchify_is_the_strided_convolution_layout)
{
    int B = 2, C = 3, H = 6, W = 9, p = 3, gh = 2, gw = 3, cols = C * p * p;
    size_t n = (size_t)B * C * H * W;
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = (float)i;
    float *img = dev_zeros(n), *out = dev_zeros(n);
    be()->upload(be(), img, h, n, NULL);
    be()->patchify(be(), out, img, B, C, H, W, p);
    float *got = host_of(out, n);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int py = 0; py < gh; py++)
            for (int px = 0; px < gw; px++)
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < p; ky++)
                        for (int kx = 0; kx < p; kx++) {
                            size_t o = ((size_t)(b * gh + py) * gw + px) * cols + (c * p + ky) * p + kx;
                            size_t i = (((size_t)b * C + c) * H + py * p + ky) * W + px * p + kx;
                            bad += got[o] != h[i];
                        }
    free(h), free(got);
    be()->release(be(), img), be()->release(be(), out);
    CHECK_MSG(bad == 0, "%d elements misplaced", bad);
}

TEST(ops_tokens_forward_backward)
{
    rng r;
    rng_init(&r, 8, 0, 0, 0);
    int B = 3, np = 4, D = 5, T = np + 1;
    float *pt = dev_rand(&r, B * np * D, 1, NULL), *cls = dev_rand(&r, D, 1, NULL);
    float *pos = dev_rand(&r, T * D, 1, NULL), *x = dev_zeros(B * T * D);
    be()->tokens_fwd(be(), x, pt, cls, pos, B, np, D);
    double *ptd = to_f64(pt, B * np * D), *cd = to_f64(cls, D), *pd = to_f64(pos, T * D);
    float *gx = host_of(x, B * T * D);
    double ref[75];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < D; i++)
                ref[(b * T + t) * D + i] =
                    (t ? ptd[(b * np + t - 1) * D + i] : cd[i]) + pd[t * D + i];
    double ef = max_err(gx, ref, B * T * D);
    /* backward: the adjoint, checked by <dx, J v> = <J^T dx, v> on the
     * concatenated (patches, cls, pos) vector */
    float *dx = dev_rand(&r, B * T * D, 1, NULL), *dpt = dev_zeros(B * np * D);
    float *dcls = dev_zeros(D), *dpos = dev_zeros(T * D);
    be()->tokens_bwd(be(), dpt, dcls, dpos, dx, B, np, D);
    double *dxd = to_f64(dx, B * T * D), *a = to_f64(dpt, B * np * D), *bc = to_f64(dcls, D),
           *bp = to_f64(dpos, T * D);
    /* <dx, x> must equal <dpt, patches> + <dcls, cls> + <dpos, pos> */
    double lhs = dotd(dxd, ref, B * T * D);
    double rhs = dotd(a, ptd, B * np * D) + dotd(bc, cd, D) + dotd(bp, pd, T * D);
    free(ptd), free(cd), free(pd), free(gx), free(dxd), free(a), free(bc), free(bp);
    float *bufs[] = {pt, cls, pos, x, dx, dpt, dcls, dpos};
    for (int i = 0; i < 8; i++)
        be()->release(be(), bufs[i]);
    CHECK_MSG(ef < 1e-6, "forward %g", ef);
    CHECK_NEAR(lhs, rhs, 1e-5);
}

/* torch.nn.functional.interpolate(mode='bicubic', align_corners=False,
 * scale_factor=s), written from its definition in float64 */
static double cubic1(double x, double A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static double cubic2(double x, double A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

static double keys(double d)
{
    d = fabs(d);
    return d <= 1 ? cubic1(d, -0.75) : d < 2 ? cubic2(d, -0.75) : 0;
}

static double ref_bicubic_at(const double *grid, int g, int D, int d, double ry, double rx)
{
    double fy = floor(ry), fx = floor(rx), s = 0;
    for (int a = -1; a <= 2; a++)
        for (int c = -1; c <= 2; c++) {
            int iy = (int)fy + a, ix = (int)fx + c;
            double w = keys(ry - (fy + a)) * keys(rx - (fx + c));
            iy = iy < 0 ? 0 : iy >= g ? g - 1 : iy;
            ix = ix < 0 ? 0 : ix >= g ? g - 1 : ix;
            s += w * grid[(iy * g + ix) * D + d];
        }
    return s;
}

typedef struct {
    int g, oh, ow, D;
    double sh, sw;
    const double *dy;
} pi_ctx;

static void ref_posinterp(const double *pos, const pi_ctx *c, double *out)
{
    for (int d = 0; d < c->D; d++)
        out[d] = pos[d];
    for (int y = 0; y < c->oh; y++)
        for (int x = 0; x < c->ow; x++)
            for (int d = 0; d < c->D; d++)
                out[(1 + y * c->ow + x) * c->D + d] =
                    ref_bicubic_at(pos + c->D, c->g, c->D, d, (y + 0.5) / c->sh - 0.5,
                                   (x + 0.5) / c->sw - 0.5);
}

static double pi_L(const double *pos, void *vc)
{
    pi_ctx *c = vc;
    int no = (1 + c->oh * c->ow) * c->D;
    double *out = malloc(no * sizeof(double));
    ref_posinterp(pos, c, out);
    double s = dotd(out, c->dy, no);
    free(out);
    return s;
}

TEST(ops_posinterp_bicubic_forward_backward)
{
    rng r;
    rng_init(&r, 9, 0, 0, 0);
    /* DINO's scale (out + 0.1) / g: downsampling, upsampling, odd sizes,
     * and a non-square output */
    int cases[][3] = {{4, 2, 2}, {14, 6, 6}, {5, 7, 7}, {3, 2, 5}};
    for (int k = 0; k < 4; k++) {
        int g = cases[k][0], oh = cases[k][1], ow = cases[k][2], D = 3;
        pi_ctx c = {g, oh, ow, D, (oh + 0.1) / g, (ow + 0.1) / g, NULL};
        int ni = (1 + g * g) * D, no = (1 + oh * ow) * D;
        float *pos = dev_rand(&r, ni, 1, NULL), *out = dev_zeros(no);
        float *dy = dev_rand(&r, no, 1, NULL), *dpos = dev_rand(&r, ni, 1, NULL);
        double *dpos0 = to_f64(dpos, ni);
        be()->posinterp_fwd(be(), out, pos, g, oh, ow, c.sh, c.sw, D);
        be()->posinterp_bwd(be(), dpos, dy, g, oh, ow, c.sh, c.sw, D);
        double *pd = to_f64(pos, ni), *dyd = to_f64(dy, no);
        double *ref = malloc(no * sizeof(double)), *gr = malloc(ni * sizeof(double));
        ref_posinterp(pd, &c, ref);
        c.dy = dyd;
        fd_grad(pi_L, pd, ni, &c, gr);
        for (int i = 0; i < ni; i++)
            gr[i] += dpos0[i];
        float *go = host_of(out, no), *gd = host_of(dpos, ni);
        double ef = max_err(go, ref, no), eb = max_err(gd, gr, ni);
        free(pd), free(dyd), free(ref), free(gr), free(go), free(gd), free(dpos0);
        float *bufs[] = {pos, out, dy, dpos};
        for (int i = 0; i < 4; i++)
            be()->release(be(), bufs[i]);
        CHECK_MSG(ef < 1e-6, "g %d -> %dx%d: forward %g", g, oh, ow, ef);
        CHECK_MSG(eb < 1e-5, "g %d -> %dx%d: backward %g", g, oh, ow, eb);
    }
}

typedef struct {
    int B, T, H, hd;
    const double *dy;
} att_ctx;

static void ref_attention(const double *qkv, const att_ctx *c, double *out)
{
    int D = c->H * c->hd, T = c->T;
    double *P = malloc(T * sizeof(double));
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, s = 0;
                for (int j = 0; j < T; j++) {
                    double d = 0;
                    for (int e = 0; e < c->hd; e++)
                        d += qkv[(b * T + i) * 3 * D + h * c->hd + e] *
                             qkv[(b * T + j) * 3 * D + D + h * c->hd + e];
                    P[j] = d / sqrt(c->hd);
                    mx = fmax(mx, P[j]);
                }
                for (int j = 0; j < T; j++)
                    s += (P[j] = exp(P[j] - mx));
                for (int e = 0; e < c->hd; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += P[j] / s * qkv[(b * T + j) * 3 * D + 2 * D + h * c->hd + e];
                    out[(b * T + i) * D + h * c->hd + e] = o;
                }
            }
    free(P);
}

static double att_L(const double *qkv, void *vc)
{
    att_ctx *c = vc;
    int n = c->B * c->T * c->H * c->hd;
    double *out = malloc(n * sizeof(double));
    ref_attention(qkv, c, out);
    double s = dotd(out, c->dy, n);
    free(out);
    return s;
}

TEST(ops_attention_forward_backward)
{
    rng r;
    rng_init(&r, 10, 0, 0, 0);
    int cases[][4] = {{1, 1, 1, 1}, {2, 5, 3, 4}, {3, 17, 2, 7}};
    for (int k = 0; k < 3; k++) {
        int B = cases[k][0], T = cases[k][1], H = cases[k][2], hd = cases[k][3], D = H * hd;
        int nq = B * T * 3 * D, no = B * T * D, na = B * H * T * T;
        float *qkv = dev_rand(&r, nq, 1, NULL), *out = dev_zeros(no), *att = dev_zeros(na);
        float *dy = dev_rand(&r, no, 1, NULL), *dqkv = dev_zeros(nq), *scr = dev_zeros(na);
        be()->attention_fwd(be(), out, att, qkv, B, T, H, hd);
        be()->attention_bwd(be(), dqkv, scr, dy, qkv, att, B, T, H, hd);
        double *qd = to_f64(qkv, nq), *dyd = to_f64(dy, no);
        double *ref = malloc(no * sizeof(double)), *g = malloc(nq * sizeof(double));
        att_ctx c = {B, T, H, hd, dyd};
        ref_attention(qd, &c, ref);
        fd_grad(att_L, qd, nq, &c, g);
        float *go = host_of(out, no), *gg = host_of(dqkv, nq);
        double ef = max_err(go, ref, no), eb = max_err(gg, g, nq);
        free(qd), free(dyd), free(ref), free(g), free(go), free(gg);
        float *bufs[] = {qkv, out, att, dy, dqkv, scr};
        for (int i = 0; i < 6; i++)
            be()->release(be(), bufs[i]);
        CHECK_MSG(ef < 1e-5, "B%d T%d H%d hd%d: forward %g", B, T, H, hd, ef);
        CHECK_MSG(eb < 1e-4, "B%d T%d H%d hd%d: backward %g", B, T, H, hd, eb);
    }
}

/* ---- DINO loss ----------------------------------------------------------------------- */

typedef struct {
    int G, S, B, K;
    double tau;
    const double *q;
} loss_ctx;

static double ref_dino_loss(const double *s, void *vc)
{
    loss_ctx *c = vc;
    double total = 0;
    int terms = 0;
    for (int i = 0; i < c->G; i++)
        for (int v = 0; v < c->S; v++) {
            if (v == i)
                continue;
            double mean = 0;
            for (int b = 0; b < c->B; b++) {
                const double *sr = s + (v * c->B + b) * c->K, *qr = c->q + (i * c->B + b) * c->K;
                double mx = -INFINITY, z = 0, ce = 0;
                for (int k = 0; k < c->K; k++)
                    mx = fmax(mx, sr[k] / c->tau);
                for (int k = 0; k < c->K; k++)
                    z += exp(sr[k] / c->tau - mx);
                for (int k = 0; k < c->K; k++)
                    ce -= qr[k] * (sr[k] / c->tau - mx - log(z));
                mean += ce / c->B;
            }
            total += mean;
            terms++;
        }
    return total / terms;
}

TEST(ops_dino_loss_teacher_probs_center)
{
    rng r;
    rng_init(&r, 11, 0, 0, 0);
    int G = 2, S = 4, B = 3, K = 19;
    float *t = dev_rand(&r, G * B * K, 1, NULL), *center = dev_rand(&r, K, 0.3, NULL);
    float *q = dev_zeros(G * B * K), *s = dev_rand(&r, S * B * K, 1, NULL);
    float *ds = dev_zeros(S * B * K), *loss = dev_zeros(1);
    double *td = to_f64(t, G * B * K), *cd = to_f64(center, K);
    be()->dino_teacher_probs(be(), q, t, center, 0.04f, G * B, K);
    be()->dino_loss(be(), loss, ds, s, q, G, S, B, K, 0.1f);
    be()->center_update(be(), center, t, G * B, K, 0.9f);
    /* teacher probabilities */
    double *qr = malloc(G * B * K * sizeof(double));
    for (int row = 0; row < G * B; row++) {
        double mx = -INFINITY, z = 0;
        for (int k = 0; k < K; k++)
            mx = fmax(mx, (td[row * K + k] - cd[k]) / 0.04);
        for (int k = 0; k < K; k++)
            z += exp((td[row * K + k] - cd[k]) / 0.04 - mx);
        for (int k = 0; k < K; k++)
            qr[row * K + k] = exp((td[row * K + k] - cd[k]) / 0.04 - mx) / z;
    }
    float *gq = host_of(q, G * B * K);
    double eq = max_err(gq, qr, G * B * K);
    /* the loss and its gradient, with the kernel's own q as the target */
    double *qd = to_f64(q, G * B * K), *sd = to_f64(s, S * B * K), *g = malloc(S * B * K * sizeof(double));
    loss_ctx c = {G, S, B, K, 0.1, qd};
    double lref = ref_dino_loss(sd, &c);
    fd_grad(ref_dino_loss, sd, S * B * K, &c, g);
    float *gl = host_of(loss, 1), *gds = host_of(ds, S * B * K);
    double eg = max_err(gds, g, S * B * K);
    /* the center */
    double cref[19];
    for (int k = 0; k < K; k++) {
        double m = 0;
        for (int row = 0; row < G * B; row++)
            m += td[row * K + k] / (G * B);
        cref[k] = 0.9 * cd[k] + 0.1 * m;
    }
    float *gc = host_of(center, K);
    double ec = max_err(gc, cref, K);
    double lgot = gl[0];
    free(td), free(cd), free(qr), free(gq), free(qd), free(sd), free(g), free(gl), free(gds), free(gc);
    float *bufs[] = {t, center, q, s, ds, loss};
    for (int i = 0; i < 6; i++)
        be()->release(be(), bufs[i]);
    CHECK_MSG(eq < 1e-6, "teacher probs %g", eq);
    CHECK_NEAR(lgot, lref, 1e-6);
    CHECK_MSG(eg < 1e-5, "loss gradient %g", eg);
    CHECK_MSG(ec < 1e-6, "center %g", ec);
}

/* ---- optimisation ----------------------------------------------------------------------- */

TEST(ops_adamw_matches_torch_formula)
{
    rng r;
    rng_init(&r, 12, 0, 0, 0);
    size_t n = 57;
    float *p = dev_rand(&r, n, 1, NULL), *m = dev_zeros(n), *v = dev_zeros(n);
    double *pd = to_f64(p, n), md[57] = {0}, vd[57] = {0};
    double lr = 0.01, wd = 0.04, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int step = 1; step <= 3; step++) {
        float *g = dev_rand(&r, n, step == 2 ? 1e-3 : 1, NULL);
        double *gd = to_f64(g, n);
        be()->adamw(be(), p, g, m, v, n, (float)lr, (float)wd, (float)b1, (float)b2, (float)eps, step);
        for (size_t i = 0; i < n; i++) {
            pd[i] *= 1 - lr * wd;
            md[i] = b1 * md[i] + (1 - b1) * gd[i];
            vd[i] = b2 * vd[i] + (1 - b2) * gd[i] * gd[i];
            double mh = md[i] / (1 - pow(b1, step)), vh = vd[i] / (1 - pow(b2, step));
            pd[i] -= lr * mh / (sqrt(vh) + eps);
        }
        free(gd);
        be()->release(be(), g);
    }
    float *gp = host_of(p, n);
    double e = max_err(gp, pd, n);
    free(gp), free(pd);
    be()->release(be(), p), be()->release(be(), m), be()->release(be(), v);
    CHECK_MSG(e < 1e-6, "error %g", e);
}

/* The fused step equals adamw on each listed tensor and then ema, bit for
 * bit: gaps between tensors, a tensor left out (a frozen layer), tensors
 * large enough for the parallel loop, different steps and decays. */
TEST(ops_adamw_ema_equals_adamw_then_ema)
{
    rng r;
    rng_init(&r, 14, 0, 0, 0);
    const size_t n = 150000;
    const gd_adam_tensor tab[] = {{.off = 3, .n = 10, .wd = 0.04f, .step = 1},
                                  {.off = 16, .n = 5, .wd = 0, .step = 7},
                                  /* 32..99 frozen: in no tensor */
                                  {.off = 100, .n = 70000, .wd = 0.04f, .step = 3},
                                  {.off = 70112, .n = 79880, .wd = 0, .step = 3}};
    const int nt = sizeof tab / sizeof tab[0];
    float *buf[2][5]; /* [fused, separate][p, g, m, v, teacher] */
    for (int k = 0; k < 5; k++) {
        float *h = malloc(n * sizeof *h);
        buf[0][k] = dev_rand(&r, n, k == 1 ? 0.1 : 1, h);
        if (k == 3)
            for (size_t i = 0; i < n; i++)
                h[i] = h[i] * h[i]; /* a second moment is not negative */
        be()->upload(be(), buf[0][k], h, n, NULL);
        buf[1][k] = dev_zeros(n);
        be()->upload(be(), buf[1][k], h, n, NULL);
        free(h);
    }
    float **f = buf[0], **s = buf[1];
    be()->adamw_ema(be(), f[0], f[1], f[2], f[3], f[4], n, tab, nt, 5e-4f, 0.9f, 0.999f, 1e-8f,
                    0.996f);
    for (int j = 0; j < nt; j++) {
        size_t o = tab[j].off;
        be()->adamw(be(), s[0] + o, s[1] + o, s[2] + o, s[3] + o, tab[j].n, 5e-4f, tab[j].wd, 0.9f,
                    0.999f, 1e-8f, tab[j].step);
    }
    be()->ema(be(), s[4], s[0], 0.996f, n);
    static const char *names[] = {"p", "g", "m", "v", "teacher"};
    for (int k = 0; k < 5; k++) {
        float *a = host_of(f[k], n), *b = host_of(s[k], n);
        CHECK_MSG(!memcmp(a, b, n * sizeof *a), "adamw_ema: %s differs from adamw then ema",
                  names[k]);
        free(a), free(b);
    }
    /* and it did update: a frozen element keeps p, a listed one moves */
    float *p0 = host_of(f[0], n);
    float *fresh = malloc(n * sizeof *fresh);
    rng_init(&r, 14, 0, 0, 0);
    be()->release(be(), dev_rand(&r, n, 1, fresh)); /* p's initial values again */
    CHECK(p0[50] == fresh[50] && p0[5] != fresh[5] && p0[120000] != fresh[120000]);
    free(p0), free(fresh);
    for (int k = 0; k < 5; k++)
        be()->release(be(), buf[0][k]), be()->release(be(), buf[1][k]);
}

TEST(ops_clip_per_tensor_ema_sum_finite)
{
    rng r;
    rng_init(&r, 13, 0, 0, 0);
    size_t off[3] = {0, 10, 13}, len[3] = {10, 3, 20};
    float *buf = dev_rand(&r, 33, 1, NULL);
    be()->scale(be(), buf + 10, 1e-3f, 3); /* a small tensor that must not be clipped */
    double *b0 = to_f64(buf, 33), norms[3];
    CHECK(be()->clip_per_tensor(be(), buf, off, len, 3, 1.5f, norms, NULL) == 0);
    double *b1 = to_f64(buf, 33);
    for (int t = 0; t < 3; t++) {
        double ss = 0, ss1 = 0;
        for (size_t i = off[t]; i < off[t] + len[t]; i++)
            ss += b0[i] * b0[i], ss1 += b1[i] * b1[i];
        CHECK_NEAR(norms[t], sqrt(ss), 1e-6);
        double want = sqrt(ss) > 1.5 ? 1.5 * sqrt(ss) / (sqrt(ss) + 1e-6) : sqrt(ss);
        CHECK_NEAR(sqrt(ss1), want, 1e-5);
    }
    CHECK(norms[1] < 1.5 && norms[2] > 1.5);
    float *t = dev_rand(&r, 33, 1, NULL), *sum = dev_zeros(1);
    double *td = to_f64(t, 33);
    be()->ema(be(), t, buf, 0.996f, 33);
    be()->sum(be(), sum, t, 33);
    double want = 0;
    for (int i = 0; i < 33; i++)
        want += 0.996 * td[i] + 0.004 * b1[i];
    float *gs = host_of(sum, 1);
    double got = gs[0];
    int fin = 0;
    CHECK(be()->all_finite(be(), t, 33, &fin, NULL) == 0 && fin == 1);
    be()->fill(be(), t + 32, NAN, 1);
    CHECK(be()->all_finite(be(), t, 33, &fin, NULL) == 0 && fin == 0);
    free(b0), free(b1), free(td), free(gs);
    be()->release(be(), buf), be()->release(be(), t), be()->release(be(), sum);
    CHECK_NEAR(got, want, 1e-5);
}
