/* The segmentation ops of ops.h (mpa-adapt) on the CUDA backend against
 * the CPU backend: bilinear resize forward and backward, the
 * cross-entropy with ignore labels and class weights, the prototype loss,
 * the per-class sums.  Random inputs of several shapes (odd sizes, up and
 * down sampling, tall inputs whose column sums run in chunks), outputs
 * NaN-poisoned, accumulators random; the rules are gpu.h's.  Every output
 * these ops overwrite must also come out finite on the CPU side, so that
 * a shape the check gets wrong shows even in the self-test. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu.h"


/* Labels [rows] as floats: classes in [0, K), about `ignored` of them the
 * ignore index or another value that is not a class (255, -1, K, 1.5,
 * NaN). */
static pair *labels_pair(gpu_test *t, int rows, int K, double ignored)
{
    static const float odd[] = {255.0f, -1.0f, 0.0f /* K */, 1.5f, NAN};
    float *h = malloc((rows ? rows : 1) * sizeof(float));
    if (!h) {
        fprintf(stderr, "test-gpu: out of memory\n");
        exit(2);
    }
    for (int r = 0; r < rows; r++) {
        if (rng_bernoulli(&t->r, ignored)) {
            int k = (int)rng_below(&t->r, 5);
            h[r] = k == 2 ? (float)K : odd[k];
        } else {
            h[r] = (float)rng_below(&t->r, (uint64_t)K);
        }
    }
    pair *p = pair_from(t, h, rows);
    free(h);
    return p;
}

TEST(cuda_seg_bilinear)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 31))
        return;
    /* B, h, w, H, W, C: a point, odd upsampling, downsampling, the
     * decoder's 4x, identity, the planar image case (C = 1), a large map */
    static const int sh[][6] = {{1, 1, 1, 1, 1, 1},  {2, 3, 5, 7, 11, 3},   {3, 9, 7, 4, 5, 2},
                                {2, 6, 6, 24, 24, 5}, {1, 8, 8, 8, 8, 4},    {6, 5, 5, 17, 13, 1},
                                {1, 1, 4, 3, 1, 2},  {2, 14, 14, 224, 224, 7}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int B = sh[k][0], h = sh[k][1], w = sh[k][2], H = sh[k][3], W = sh[k][4], C = sh[k][5];
        size_t nin = (size_t)B * h * w * C, nout = (size_t)B * H * W * C;
        pair *in = pair_in(&t, nin, 1), *out = pair_out(&t, nout);
        pair *dout = pair_in(&t, nout, 1), *din = pair_out(&t, nin);
        SIDES(s)
        {
            BE(s)->bilinear_fwd(BE(s), D(out, s), D(in, s), B, h, w, H, W, C);
            BE(s)->bilinear_bwd(BE(s), D(din, s), D(dout, s), B, h, w, H, W, C);
        }
        SYNC(&t);
        CHECK_WRITTEN(&t, out, "bilinear_fwd");
        CHECK_WRITTEN(&t, din, "bilinear_bwd");
        CHECK_CLOSE(&t, out, TOL_FP32, "bilinear_fwd B=%d %dx%d -> %dx%d C=%d", B, h, w, H, W, C);
        CHECK_CLOSE(&t, din, TOL_FP32, "bilinear_bwd B=%d %dx%d -> %dx%d C=%d", B, h, w, H, W, C);
        gpu_end(&t);
    }
}

TEST(cuda_seg_ce)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 32))
        return;
    /* rows, K, share of ignored rows (1: none counts, the zero case) */
    static const struct {
        int rows, K;
        double ign;
    } sh[] = {{1, 1, 0}, {7, 3, 0.3}, {1000, 6, 0.2}, {4099, 19, 0.5}, {70001, 2, 0.1},
              {33, 5, 1}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int rows = sh[k].rows, K = sh[k].K;
        size_t n = (size_t)rows * K;
        pair *x = pair_in(&t, n, 3), *lab = labels_pair(&t, rows, K, sh[k].ign);
        pair *wt = pair_in(&t, K, 1);
        for (int c = 0; c < K; c++) /* positive weights, one class weighted 0 */
            wt->h[c] = c == K / 2 && K > 1 ? 0.0f : 0.25f + fabsf(wt->h[c]);
        SIDES(s) BE(s)->upload(BE(s), D(wt, s), wt->h, K, NULL);
        for (int v = 0; v < 2; v++) {
            const char *wn = v ? "weights" : "no weights";
            pair *loss = pair_out(&t, 2), *g = pair_out(&t, n), *loss2 = pair_out(&t, 2);
            SIDES(s)
            {
                const float *w = v ? D(wt, s) : NULL;
                BE(s)->seg_ce(BE(s), D(loss, s), D(g, s), D(x, s), D(lab, s), w, rows, K, 0.5f);
                BE(s)->seg_ce(BE(s), D(loss2, s), NULL, D(x, s), D(lab, s), w, rows, K, 0.5f);
            }
            SYNC(&t);
            CHECK_WRITTEN(&t, loss, "seg_ce loss");
            CHECK_WRITTEN(&t, g, "seg_ce dlogits");
            CHECK_CLOSE(&t, loss, TOL_FP32, "seg_ce loss rows=%d K=%d %s", rows, K, wn);
            CHECK_CLOSE(&t, g, TOL_FP32, "seg_ce dlogits rows=%d K=%d %s", rows, K, wn);
            CHECK_CLOSE(&t, loss2, TOL_FP32, "seg_ce (no dlogits) rows=%d K=%d %s", rows, K, wn);
        }
        gpu_end(&t);
    }
}

TEST(cuda_seg_proto_loss)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 33))
        return;
    /* rows, D, K, share of unlabelled rows; T, alpha */
    static const struct {
        int rows, D, K;
        double ign;
        float T, alpha;
    } sh[] = {{1, 1, 1, 0, 20, 0.9f},       {5, 8, 3, 0.2, 20, 0.9f},  {300, 128, 6, 0.3, 20, 0.9f},
              {1001, 33, 7, 0.5, 1, 0.5f},  {4000, 16, 19, 0.1, 20, 0.9f}, {17, 9, 4, 1, 20, 0.9f}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int rows = sh[k].rows, D = sh[k].D, K = sh[k].K;
        float T = sh[k].T, alpha = sh[k].alpha;
        size_t n = (size_t)rows * D;
        pair *f = pair_in(&t, n, 3), *protos = pair_in(&t, (size_t)K * D, 3);
        pair *lab = labels_pair(&t, rows, K, sh[k].ign);
        pair *loss = pair_out(&t, 2), *df = pair_out(&t, n), *loss2 = pair_out(&t, 2);
        SIDES(s)
        {
            BE(s)->proto_loss(BE(s), D(loss, s), D(df, s), D(f, s), D(protos, s), D(lab, s), rows,
                              D, K, T, alpha, 0.25f);
            BE(s)->proto_loss(BE(s), D(loss2, s), NULL, D(f, s), D(protos, s), D(lab, s), rows, D,
                              K, T, alpha, 0.25f);
        }
        SYNC(&t);
        CHECK_WRITTEN(&t, loss, "proto_loss loss");
        CHECK_WRITTEN(&t, df, "proto_loss df");
        CHECK_CLOSE(&t, loss, TOL_FP32, "proto_loss rows=%d D=%d K=%d T=%g", rows, D, K, T);
        CHECK_CLOSE(&t, df, TOL_FP32, "proto_loss df rows=%d D=%d K=%d T=%g", rows, D, K, T);
        CHECK_CLOSE(&t, loss2, TOL_FP32, "proto_loss (no df) rows=%d D=%d K=%d", rows, D, K);
        gpu_end(&t);
    }
}

TEST(cuda_seg_class_sums)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 34))
        return;
    /* rows, D, K: tall inputs take the chunked column sums */
    static const int sh[][3] = {{1, 1, 1}, {5, 2, 3}, {1000, 128, 6}, {70001, 8, 19}, {9, 3, 40}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int rows = sh[k][0], D = sh[k][1], K = sh[k][2];
        pair *f = pair_in(&t, (size_t)rows * D, 1), *lab = labels_pair(&t, rows, K, 0.2);
        pair *sums = pair_acc(&t, (size_t)K * D, 1), *counts = pair_acc(&t, K, 1);
        SIDES(s)
        BE(s)->class_sums(BE(s), D(sums, s), D(counts, s), D(f, s), D(lab, s), rows, D, K);
        SYNC(&t);
        CHECK_CLOSE(&t, sums, TOL_FP32, "class_sums sums rows=%d D=%d K=%d", rows, D, K);
        CHECK_CLOSE(&t, counts, TOL_FP32, "class_sums counts rows=%d D=%d K=%d", rows, D, K);
        gpu_end(&t);
    }
}
