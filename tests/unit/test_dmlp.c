/* The deformable-MLP ops (kernels/cpu/dmlp_ops.c) against direct float64
 * implementations and central finite differences of them; the dmlp head's
 * whole decoder gradient against finite differences of the model's own
 * loss; its checkpoint. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "rng.h"
#include "seg.h"
#include "seg_fixture.h"
#include "test.h"
#include "trainer.h"

static gd_backend *be(void) { return gd_backend_cpu(); }

static void to_double(double *d, const float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = f[i];
}

/* ---- depthwise 3x3 convolution ------------------------------------------- */

enum { CB = 2, CH = 4, CW = 5, CC = 3 };

/* sum_p g[p] y[p] of the convolution, written as the textbook sum over
 * output positions and taps */
static double ref_dwconv_dot(const double *x, const double *w, const double *b, const float *g,
                             double *y)
{
    double dot = 0;
    for (int n = 0; n < CB; n++)
        for (int i = 0; i < CH; i++)
            for (int j = 0; j < CW; j++)
                for (int c = 0; c < CC; c++) {
                    double v = b[c];
                    for (int ky = -1; ky <= 1; ky++)
                        for (int kx = -1; kx <= 1; kx++) {
                            int ii = i + ky, jj = j + kx;
                            if (ii >= 0 && ii < CH && jj >= 0 && jj < CW)
                                v += w[c * 9 + (ky + 1) * 3 + kx + 1] *
                                     x[((n * CH + ii) * CW + jj) * CC + c];
                        }
                    size_t p = ((size_t)(n * CH + i) * CW + j) * CC + c;
                    if (y)
                        y[p] = v;
                    dot += g[p] * v;
                }
    return dot;
}

/* d dot / d v[k] by central differences of the float64 reference */
static double fd(double *v, int k, const double *x, const double *w, const double *b,
                 const float *g)
{
    double v0 = v[k], h = 1e-4, a, c;
    v[k] = v0 + h, a = ref_dwconv_dot(x, w, b, g, NULL);
    v[k] = v0 - h, c = ref_dwconv_dot(x, w, b, g, NULL);
    v[k] = v0;
    return (a - c) / (2 * h);
}

TEST(dmlp_dwconv3_forward_and_backward_against_a_direct_loop)
{
    enum { NX = CB * CH * CW * CC };
    rng r;
    rng_init(&r, 31, 0, 0, 0);
    float x[NX], w[CC * 9], b[CC], g[NX], y[NX], dx[NX], dw[CC * 9], db[CC];
    tu_fill_normal(&r, x, NX, 1), tu_fill_normal(&r, w, CC * 9, 1), tu_fill_normal(&r, b, CC, 1);
    tu_fill_normal(&r, g, NX, 1);
    float *X = tu_dev_of(x, NX), *Wt = tu_dev_of(w, CC * 9), *Bs = tu_dev_of(b, CC), *G = tu_dev_of(g, NX);
    float *Y = be()->alloc(be(), NX, NULL), *DX = be()->alloc(be(), NX, NULL);
    float dw0[CC * 9], db0[CC];
    tu_fill_normal(&r, dw0, CC * 9, 1), tu_fill_normal(&r, db0, CC, 1); /* backward accumulates */
    float *DW = tu_dev_of(dw0, CC * 9), *DB = tu_dev_of(db0, CC);
    be()->dwconv3_fwd(be(), Y, X, Wt, Bs, CB, CH, CW, CC);
    be()->dwconv3_bwd(be(), DX, DW, DB, G, X, Wt, CB, CH, CW, CC);
    tu_host_from(y, Y, NX), tu_host_from(dx, DX, NX), tu_host_from(dw, DW, CC * 9), tu_host_from(db, DB, CC);
    double xd[NX], wd[CC * 9], bd[CC], yd[NX];
    to_double(xd, x, NX), to_double(wd, w, CC * 9), to_double(bd, b, CC);
    ref_dwconv_dot(xd, wd, bd, g, yd);
    for (int i = 0; i < NX; i++)
        CHECK_NEAR(y[i], yd[i], 1e-5);
    for (int i = 0; i < NX; i++)
        CHECK_NEAR(dx[i], fd(xd, i, xd, wd, bd, g), 1e-4);
    for (int i = 0; i < CC * 9; i++)
        CHECK_NEAR(dw[i] - dw0[i], fd(wd, i, xd, wd, bd, g), 1e-4);
    for (int i = 0; i < CC; i++)
        CHECK_NEAR(db[i] - db0[i], fd(bd, i, xd, wd, bd, g), 1e-4);
    float *bufs[] = {X, Wt, Bs, G, Y, DX, DW, DB};
    for (int i = 0; i < 8; i++)
        be()->release(be(), bufs[i]);
}

/* ---- deformable sampling ------------------------------------------------- */

enum { SB = 2, SH = 5, SW = 6, SC = 3 };
#define SMAX (SH / 4.0) /* a quarter of the map, as the model clamps */

/* x at integer (i, j) of map n, 0 outside */
static double at(const double *x, int n, int i, int j, int c)
{
    if (i < 0 || i >= SH || j < 0 || j >= SW)
        return 0;
    return x[((n * SH + i) * SW + j) * SC + c];
}

/* sum_p g[p] y[p], the sampling written out: m * the bilinear mix of the
 * four integer neighbours of (i + dy, j + dx) */
static double ref_sample_dot(const double *x, const double *om, const float *g, double *y)
{
    double dot = 0;
    for (int n = 0; n < SB; n++)
        for (int i = 0; i < SH; i++)
            for (int j = 0; j < SW; j++) {
                const double *o = om + ((n * SH + i) * SW + j) * 3;
                double dy = fmin(fmax(o[0], -SMAX), SMAX), dx = fmin(fmax(o[1], -SMAX), SMAX);
                double m = 2 / (1 + exp(-o[2]));
                double py = i + dy, px = j + dx, y0 = floor(py), x0 = floor(px);
                double a = py - y0, b = px - x0;
                for (int c = 0; c < SC; c++) {
                    double v = (1 - a) * (1 - b) * at(x, n, (int)y0, (int)x0, c) +
                               (1 - a) * b * at(x, n, (int)y0, (int)x0 + 1, c) +
                               a * (1 - b) * at(x, n, (int)y0 + 1, (int)x0, c) +
                               a * b * at(x, n, (int)y0 + 1, (int)x0 + 1, c);
                    size_t p = ((size_t)(n * SH + i) * SW + j) * SC + c;
                    if (y)
                        y[p] = m * v;
                    dot += g[p] * m * v;
                }
            }
    return dot;
}

static double fd_sample(double *v, int k, const double *x, const double *om, const float *g)
{
    double v0 = v[k], h = 1e-5, a, c;
    v[k] = v0 + h, a = ref_sample_dot(x, om, g, NULL);
    v[k] = v0 - h, c = ref_sample_dot(x, om, g, NULL);
    v[k] = v0;
    return (a - c) / (2 * h);
}

/* Offsets in +-1.6 (some clamped at +-1.25, some sampling outside the
 * map), never within 0.05 of a kink of the bilinear or the clamp. */
static float draw_offset(rng *r)
{
    for (;;) {
        double v = rng_range(r, -1.6, 1.6), f = v - floor(v);
        if (f > 0.05 && f < 0.95 && fabs(fabs(v) - SMAX) > 0.05)
            return (float)v;
    }
}

TEST(dmlp_deform_sample_forward_and_gradients_against_a_direct_sampler)
{
    enum { NX = SB * SH * SW * SC, NO = SB * SH * SW * 3 };
    rng r;
    rng_init(&r, 32, 0, 0, 0);
    float x[NX], om[NO], g[NX], y[NX], dx[NX], dom[NO];
    tu_fill_normal(&r, x, NX, 1), tu_fill_normal(&r, g, NX, 1);
    int clamped = 0, outside = 0;
    for (int p = 0; p < NO / 3; p++) {
        om[3 * p] = draw_offset(&r), om[3 * p + 1] = draw_offset(&r);
        om[3 * p + 2] = (float)rng_normal(&r);
        clamped += fabsf(om[3 * p]) > SMAX;
        int i = p / SW % SH;
        outside += i + om[3 * p] < 0 || i + om[3 * p] > SH - 1;
    }
    CHECK(clamped > 5 && outside > 5); /* the draw covers both cases */
    float *X = tu_dev_of(x, NX), *OM = tu_dev_of(om, NO), *G = tu_dev_of(g, NX);
    float *Y = be()->alloc(be(), NX, NULL), *DX = be()->alloc(be(), NX, NULL);
    float *DOM = be()->alloc(be(), NO, NULL);
    be()->deform_sample_fwd(be(), Y, X, OM, SB, SH, SW, SC, (float)SMAX);
    be()->deform_sample_bwd(be(), DX, DOM, G, X, OM, SB, SH, SW, SC, (float)SMAX);
    tu_host_from(y, Y, NX), tu_host_from(dx, DX, NX), tu_host_from(dom, DOM, NO);
    double xd[NX], od[NO], yd[NX];
    to_double(xd, x, NX), to_double(od, om, NO);
    ref_sample_dot(xd, od, g, yd);
    for (int i = 0; i < NX; i++)
        CHECK_NEAR(y[i], yd[i], 1e-5);
    for (int i = 0; i < NX; i++)
        CHECK_NEAR(dx[i], fd_sample(xd, i, xd, od, g), 1e-4);
    int zero = 0;
    for (int i = 0; i < NO; i++) { /* offsets (dy, dx) and modulation */
        double f = fd_sample(od, i, xd, od, g);
        CHECK_MSG(fabs(dom[i] - f) < 1e-4 + 1e-4 * fabs(f), "om %d: %g vs fd %g", i, dom[i], f);
        zero += i % 3 < 2 && dom[i] == 0;
    }
    CHECK(zero >= clamped); /* a clamped offset gets no gradient */
    float *bufs[] = {X, OM, G, Y, DX, DOM};
    for (int i = 0; i < 6; i++)
        be()->release(be(), bufs[i]);
}

TEST(dmlp_deform_sample_with_zero_offsets_is_the_plain_1x1_linear)
{
    enum { NX = SB * SH * SW * SC, NO = SB * SH * SW * 3, R = SB * SH * SW, OUT = 4 };
    rng r;
    rng_init(&r, 33, 0, 0, 0);
    float x[NX], w[OUT * SC], om[NO] = {0}, y[R * OUT], z[R * OUT];
    tu_fill_normal(&r, x, NX, 1), tu_fill_normal(&r, w, OUT * SC, 1);
    float *X = tu_dev_of(x, NX), *OM = tu_dev_of(om, NO), *Wt = tu_dev_of(w, OUT * SC);
    float *S = be()->alloc(be(), NX, NULL), *Y = be()->alloc(be(), R * OUT, NULL);
    float *Z = be()->alloc(be(), R * OUT, NULL);
    /* om = 0: offsets 0, m = 2 sigmoid(0) = 1 */
    be()->deform_sample_fwd(be(), S, X, OM, SB, SH, SW, SC, (float)SMAX);
    be()->gemm(be(), false, true, R, OUT, SC, 1.0f, S, SC, 0, Wt, SC, 0, 0.0f, Y, OUT, 0, 1);
    be()->gemm(be(), false, true, R, OUT, SC, 1.0f, X, SC, 0, Wt, SC, 0, 0.0f, Z, OUT, 0, 1);
    tu_host_from(y, Y, R * OUT), tu_host_from(z, Z, R * OUT);
    for (int i = 0; i < R * OUT; i++) {
        double ref = 0;
        for (int c = 0; c < SC; c++)
            ref += (double)w[i % OUT * SC + c] * x[i / OUT * SC + c];
        CHECK_NEAR(y[i], ref, 1e-5);
        CHECK(y[i] == z[i]);
    }
    float *bufs[] = {X, OM, Wt, S, Y, Z};
    for (int i = 0; i < 6; i++)
        be()->release(be(), bufs[i]);
}

/* ---- the dmlp head ------------------------------------------------------- */

static seg_model *dmlp_model(int blocks, gd_err *err)
{
    msg *ck = tu_tiny_checkpoint(2);
    if (!ck)
        return gd_errf(err, "no checkpoint"), NULL;
    seg_cfg c = {.levels = {1, 2}, .nlevels = 2, .emb_chans = 4, .num_classes = 3,
                 .role = DINO_TEACHER, .head = SEG_HEAD_DMLP, .dmlp_blocks = blocks};
    seg_model *s = seg_model_from_dino(be(), ck, &c, 2, 1, err);
    msg_free(ck);
    return s;
}

enum { N = 2, S = 16, C = 2, K = 3, E = 4 };

TEST(dmlp_head_decoder_gradient_matches_finite_differences)
{
    gd_err err;
    seg_model *s = dmlp_model(2, &err);
    CHECK_MSG(s, "%s", err.msg);
    rng r;
    rng_init(&r, 34, 0, 0, 0);
    float img[N * C * S * S], protos[K * E];
    uint8_t lab[N * S * S];
    tu_fill_normal(&r, img, N * C * S * S, 1);
    tu_fill_normal(&r, protos, K * E, 1);
    for (int i = 0; i < N * S * S; i++)
        lab[i] = rng_below(&r, 5) == 0 ? SEG_IGNORE : (uint8_t)rng_below(&r, K);
    size_t n;
    float *P = seg_model_params(s, &n), *G = seg_model_grads(s, &n);
    /* random weights everywhere (the offset layer starts at zero, and then
     * the offsets and the depthwise branch would carry no gradient) */
    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    tu_fill_normal(&r, p, n, 0.4);
    be()->upload(be(), P, p, n, NULL);
    seg_loss_opts o = {.protos = protos, .lambda_proto = 0.3, .temp = 2, .alpha = 0.9,
                       .weight = 1};
    seg_losses l;
    seg_zero_grad(s);
    CHECK_MSG(seg_batch_loss(s, img, lab, N, S, &o, true, &l, &err) == 0, "%s", err.msg);
    tu_host_from(g, G, n);
    int checked = 0, bad = 0;
    for (size_t i = 0; i < n; i += 3) {
        double fdv = tu_seg_fd(s, P + i, 3e-3, img, lab, N, S, &o);
        CHECK(isfinite(fdv));
        if (fabs(g[i] - fdv) > 2e-3 + 2e-2 * fabs(fdv)) {
            bad++;
            fprintf(stderr, "  float %zu: %g vs fd %g\n", i, g[i], fdv);
        }
        checked++;
    }
    CHECK_MSG(bad == 0, "%d of %d floats off", bad, checked);
    CHECK(checked > 200);
    free(g), free(p);
    seg_model_free(s);
}

TEST(dmlp_head_checkpoint_round_trip_and_a_plain_head_refuses_it)
{
    gd_err err;
    seg_model *s = dmlp_model(1, &err);
    CHECK_MSG(s, "%s", err.msg);
    rng r;
    rng_init(&r, 35, 0, 0, 0);
    size_t n;
    float *P = seg_model_params(s, &n), *p = malloc(n * sizeof *p);
    tu_fill_normal(&r, p, n, 0.4);
    be()->upload(be(), P, p, n, NULL);
    float img[N * C * S * S], a[N * S * S * K], b[N * S * S * K];
    tu_fill_normal(&r, img, N * C * S * S, 1);
    CHECK(seg_predict(s, img, N, S, S, a, &err) == 0);
    msg *m = seg_model_save(s, 7, &err);
    CHECK_MSG(m, "%s", err.msg);
    CHECK_STR_CONTAINS(value_str(value_get(&m->meta, "seg"), "head", ""), "dmlp");
    CHECK(value_int(value_get(&m->meta, "seg"), "dmlp_blocks", 0) == 1);
    CHECK(msg_get_tensor(m, "decoder/dmlp/0/offset/weight"));
    seg_model *t = seg_model_load(be(), m, 2, &err);
    CHECK_MSG(t, "%s", err.msg);
    CHECK(seg_model_cfg(t)->head == SEG_HEAD_DMLP && seg_model_cfg(t)->dmlp_blocks == 1);
    CHECK(seg_predict(t, img, N, S, S, b, &err) == 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* the same tensors under a meta that says plain */
    CHECK(value_set_str((value *)value_get(&m->meta, "seg"), "head", "plain"));
    seg_model *u = seg_model_load(be(), m, 2, &err);
    CHECK(!u);
    CHECK_STR_CONTAINS(err.msg, "belongs to a dmlp head");
    seg_model_free(t);
    msg_free(m);
    free(p);
    seg_model_free(s);
}
