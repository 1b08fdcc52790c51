/* The deformable-MLP ops of ops.h (mpa-adapt --head dmlp) on the CUDA
 * backend against the CPU backend: the depthwise 3x3 convolution and the
 * modulated deformable sampling, forward and backward.  Random inputs of
 * several shapes (a single pixel, odd sizes, one row or column, a map tall
 * enough for the chunked column sums), raw offsets that clamp (and some
 * exactly at the bound, at integers, far outside), samples outside the
 * map; outputs NaN-poisoned, accumulators random; the rules are gpu.h's.
 * The backward runs twice on the GPU side, which must give the same bits
 * (no atomics). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu.h"


static bool has_dmlp_ops(const gd_backend *be)
{
    return be->dwconv3_fwd && be->dwconv3_bwd && be->deform_sample_fwd && be->deform_sample_bwd;
}

/* true when the GPU side's copies of a and b hold the same bits */
static bool same_bits(gpu_test *t, pair *a, pair *b)
{
    size_t n = a->n ? a->n : 1;
    float *h[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    gd_err err;
    gd_backend *g = t->be[GPU];
    bool ok = a->n == b->n && h[0] && h[1] && g->download(g, h[0], a->dev[GPU], a->n, &err) == 0 &&
              g->download(g, h[1], b->dev[GPU], b->n, &err) == 0 &&
              !memcmp(h[0], h[1], a->n * sizeof(float));
    free(h[0]);
    free(h[1]);
    return ok;
}

#define CHECK_SAME_BITS(t, a, b, what)                                                    \
    CHECK_MSG(same_bits((t), (a), (b)), "%s: two runs differ on the GPU", what)

/* B, H, W, C: a pixel, odd sizes, one row, one column, many channels, and
 * 2 x 56 x 56 positions (the chunked column sums) */
static const int shapes[][4] = {{1, 1, 1, 1},   {2, 3, 5, 7},   {1, 7, 4, 3},
                                {3, 1, 9, 2},   {5, 6, 1, 33},  {3, 14, 14, 128},
                                {2, 56, 56, 16}};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

TEST(cuda_dmlp_dwconv3)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 41))
        return;
    CHECK_MSG(has_dmlp_ops(BE(GPU)), "%s backend: no deformable-MLP ops", BE(GPU)->name);
    for (size_t k = 0; k < NSHAPES; k++) {
        int B = shapes[k][0], H = shapes[k][1], W = shapes[k][2], C = shapes[k][3];
        size_t n = (size_t)B * H * W * C;
        pair *x = pair_in(&t, n, 1), *w = pair_in(&t, (size_t)C * 9, 0.5);
        pair *bias = pair_in(&t, C, 1), *y = pair_out(&t, n), *dy = pair_in(&t, n, 1);
        pair *dx = pair_out(&t, n), *dw = pair_acc(&t, (size_t)C * 9, 1);
        pair *db = pair_acc(&t, C, 1);
        pair *dx2 = pair_out(&t, n), *dw2 = pair_from(&t, dw->h, dw->n);
        pair *db2 = pair_from(&t, db->h, db->n);
        SIDES(s)
        {
            BE(s)->dwconv3_fwd(BE(s), D(y, s), D(x, s), D(w, s), D(bias, s), B, H, W, C);
            BE(s)->dwconv3_bwd(BE(s), D(dx, s), D(dw, s), D(db, s), D(dy, s), D(x, s), D(w, s),
                               B, H, W, C);
        }
        BE(GPU)->dwconv3_bwd(BE(GPU), D(dx2, GPU), D(dw2, GPU), D(db2, GPU), D(dy, GPU),
                             D(x, GPU), D(w, GPU), B, H, W, C);
        SYNC(&t);
        CHECK_WRITTEN(&t, y, "dwconv3_fwd");
        CHECK_WRITTEN(&t, dx, "dwconv3_bwd dx");
        CHECK_CLOSE(&t, y, TOL_FP32, "dwconv3_fwd B=%d %dx%d C=%d", B, H, W, C);
        CHECK_CLOSE(&t, dx, TOL_FP32, "dwconv3_bwd dx B=%d %dx%d C=%d", B, H, W, C);
        CHECK_CLOSE(&t, dw, TOL_FP32, "dwconv3_bwd dw B=%d %dx%d C=%d", B, H, W, C);
        CHECK_CLOSE(&t, db, TOL_FP32, "dwconv3_bwd dbias B=%d %dx%d C=%d", B, H, W, C);
        CHECK_SAME_BITS(&t, dx, dx2, "dwconv3_bwd dx");
        CHECK_SAME_BITS(&t, dw, dw2, "dwconv3_bwd dw");
        CHECK_SAME_BITS(&t, db, db2, "dwconv3_bwd dbias");
        gpu_end(&t);
    }
}

/* Raw values om [npos, 3]: offsets normal with sd 1.5 max_off + 0.5 (a
 * good share clamps, many samples near a border fall outside), the
 * modulation's raw value normal(0, 2); the first positions take the edge
 * cases: far beyond the bound, exactly at it, integer offsets (taps with
 * weight 0), a saturated sigmoid.  *nclamped: offsets clamped. */
static pair *om_pair(gpu_test *t, size_t npos, float max_off, int *nclamped)
{
    static const float edge[][3] = {{30, -30, 0}, {1, -1, 0}, {0, 0, 40}, {-1, 1, -40},
                                    {2, 0.5f, 0}};
    float *h = malloc(3 * npos * sizeof(float));
    if (!h) {
        fprintf(stderr, "test-gpu: out of memory\n");
        exit(2);
    }
    *nclamped = 0;
    for (size_t p = 0; p < npos; p++) {
        for (int d = 0; d < 3; d++) {
            double sd = d < 2 ? 1.5 * max_off + 0.5 : 2;
            h[3 * p + d] = (float)(rng_normal(&t->r) * sd);
        }
        if (p < sizeof edge / sizeof edge[0])
            for (int d = 0; d < 3; d++) /* {1, -1}: at the bound when max_off = 1 */
                h[3 * p + d] = d < 2 && fabsf(edge[p][d]) == 1 ? edge[p][d] * max_off
                                                                 : edge[p][d];
        for (int d = 0; d < 2; d++)
            *nclamped += !(fabsf(h[3 * p + d]) < max_off);
    }
    pair *om = pair_from(t, h, 3 * npos);
    free(h);
    return om;
}

TEST(cuda_dmlp_deform_sample)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 42))
        return;
    CHECK_MSG(has_dmlp_ops(BE(GPU)), "%s backend: no deformable-MLP ops", BE(GPU)->name);
    for (size_t k = 0; k < NSHAPES; k++) {
        int B = shapes[k][0], H = shapes[k][1], W = shapes[k][2], C = shapes[k][3];
        /* the head's bound (a quarter of the map), and a large one that
         * sends samples off small maps */
        float bounds[2] = {H / 4.0f, 3.0f};
        for (int v = 0; v < 2; v++) {
            float mo = bounds[v];
            size_t npos = (size_t)B * H * W, n = npos * C;
            int nclamped;
            pair *x = pair_in(&t, n, 1), *om = om_pair(&t, npos, mo, &nclamped);
            pair *y = pair_out(&t, n), *dy = pair_in(&t, n, 1);
            pair *dx = pair_out(&t, n), *dom = pair_out(&t, 3 * npos);
            pair *dx2 = pair_out(&t, n), *dom2 = pair_out(&t, 3 * npos);
            CHECK_MSG(nclamped > 0, "no offset clamps (B=%d %dx%d)", B, H, W);
            SIDES(s)
            {
                BE(s)->deform_sample_fwd(BE(s), D(y, s), D(x, s), D(om, s), B, H, W, C, mo);
                BE(s)->deform_sample_bwd(BE(s), D(dx, s), D(dom, s), D(dy, s), D(x, s),
                                         D(om, s), B, H, W, C, mo);
            }
            BE(GPU)->deform_sample_bwd(BE(GPU), D(dx2, GPU), D(dom2, GPU), D(dy, GPU),
                                       D(x, GPU), D(om, GPU), B, H, W, C, mo);
            SYNC(&t);
            CHECK_WRITTEN(&t, y, "deform_sample_fwd");
            CHECK_WRITTEN(&t, dx, "deform_sample_bwd dx");
            CHECK_WRITTEN(&t, dom, "deform_sample_bwd dom");
            CHECK_CLOSE(&t, y, TOL_FP32, "deform_sample_fwd B=%d %dx%d C=%d max_off=%g", B, H, W,
                        C, mo);
            CHECK_CLOSE(&t, dx, TOL_FP32, "deform_sample_bwd dx B=%d %dx%d C=%d max_off=%g", B,
                        H, W, C, mo);
            CHECK_CLOSE(&t, dom, TOL_FP32, "deform_sample_bwd dom B=%d %dx%d C=%d max_off=%g", B,
                        H, W, C, mo);
            CHECK_SAME_BITS(&t, dx, dx2, "deform_sample_bwd dx");
            CHECK_SAME_BITS(&t, dom, dom2, "deform_sample_bwd dom");
            gpu_end(&t);
        }
    }
}
