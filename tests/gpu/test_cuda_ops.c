/* Each op of ops.h on the CUDA backend against the CPU backend, on fresh
 * random inputs of several shapes (odd ones included), forward and
 * backward.  See gpu.h for the rules (tolerances, NaN-poisoned outputs).
 * The loop `for (int s = 0; s < 2; s++)` runs the same call on the CPU
 * (s = CPU) and on the GPU (s = GPU). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "gpu.h"


TEST(cuda_device_described)
{
    if (gpu_selftest()) {
        test_skip("self-test: needs the GPU");
        return;
    }
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 1))
        return;
    char desc[256];
    gd_err err;
    CHECK_MSG(gd_cuda_describe(0, desc, sizeof desc, &err) == 0, "%s", err.msg);
    printf(" [%s]", desc);
}

TEST(cuda_saxpy_matches_cpu)
{
    if (gpu_selftest()) {
        test_skip("self-test: needs the GPU");
        return;
    }
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 2))
        return;
    enum { N = 1000003 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *ref = malloc(N * sizeof *ref);
    CHECK(x && y && ref);
    for (size_t i = 0; i < N; i++) {
        x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
        y[i] = ref[i] = (float)(i % 7);
        ref[i] = 2.5f * x[i] + ref[i];
    }
    gd_err err;
    int rc = gd_cuda_saxpy(2.5f, x, y, N, &err);
    double e = rel_err(y, ref, N);
    free(x);
    free(y);
    free(ref);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_MSG(e <= 1e-7, "relative error %g", e);
}

/* ---- memory and elementwise ---------------------------------------------------- */

static const size_t lengths[] = {1, 7, 1000, 65537, 1000003};
#define NLEN (sizeof lengths / sizeof lengths[0])

/* Elementwise float arithmetic is IEEE on both sides and the CUDA kernels
 * are built with --fmad=false: the same bits (tolerance 0), which
 * ema-update's bit-for-bit test relies on. */
TEST(cuda_elementwise_bitwise)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 3))
        return;
    for (size_t k = 0; k < NLEN; k++) {
        size_t n = lengths[k];
        pair *a = pair_in(&t, n, 1), *b = pair_in(&t, n, 2), *f = pair_out(&t, n);
        pair *cp = pair_out(&t, n), *sum = pair_out(&t, n), *y = pair_acc(&t, n, 1);
        pair *sc = pair_in(&t, n, 1), *mv = pair_in(&t, n + 5, 1);
        pair *tch = pair_in(&t, n, 1), *p = pair_in(&t, n, 1), *m = pair_in(&t, n, 0.01),
             *v = pair_in(&t, n, 0.01);
        for (size_t i = 0; i < n; i++)
            v->h[i] = fabsf(v->h[i]); /* a second moment is not negative */
        SIDES(s) BE(s)->upload(BE(s), D(v, s), v->h, n, NULL);
        SIDES(s)
        {
            BE(s)->fill(BE(s), D(f, s), -2.5f, n);
            BE(s)->copy(BE(s), D(cp, s), D(a, s), n);
            BE(s)->add(BE(s), D(sum, s), D(a, s), D(b, s), n);
            BE(s)->axpy(BE(s), D(y, s), 0.37f, D(b, s), n);
            BE(s)->scale(BE(s), D(sc, s), -1.7f, n);
            BE(s)->copy(BE(s), D(mv, s) + 3, D(mv, s), n); /* overlapping: memmove */
            BE(s)->ema(BE(s), D(tch, s), D(a, s), 0.996f, n);
            BE(s)->adamw(BE(s), D(p, s), D(b, s), D(m, s), D(v, s), n, 5e-4f, 0.04f, 0.9f, 0.999f,
                         1e-8f, 3);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, f, 0, "fill n=%zu", n);
        CHECK_CLOSE(&t, cp, 0, "copy n=%zu", n);
        CHECK_CLOSE(&t, sum, 0, "add n=%zu", n);
        CHECK_CLOSE(&t, y, 0, "axpy n=%zu", n);
        CHECK_CLOSE(&t, sc, 0, "scale n=%zu", n);
        CHECK_CLOSE(&t, mv, 0, "overlapping copy n=%zu", n);
        CHECK_CLOSE(&t, tch, 0, "ema n=%zu", n);
        CHECK_CLOSE(&t, p, 0, "adamw p n=%zu", n);
        CHECK_CLOSE(&t, m, 0, "adamw m n=%zu", n);
        CHECK_CLOSE(&t, v, 0, "adamw v n=%zu", n);
        gpu_end(&t);
    }
}

TEST(cuda_copy_rows_scale_rows)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 4))
        return;
    static const struct {
        int rows;
        size_t n, ss, ds;
    } sh[] = {{1, 1, 1, 1}, {3, 5, 17, 9}, {64, 384, 197 * 384, 384}, {7, 1001, 1001, 2003}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int rows = sh[k].rows;
        size_t n = sh[k].n;
        pair *src = pair_in(&t, rows * sh[k].ss, 1), *dst = pair_out(&t, rows * sh[k].ds);
        pair *x = pair_in(&t, rows * n, 1), *y = pair_out(&t, rows * n), *z = pair_in(&t, rows * n, 1);
        float *scale = malloc(rows * sizeof(float));
        for (int r = 0; r < rows; r++)
            scale[r] = r % 3 == 1 ? 0.0f : 1.25f + (float)r;
        SIDES(s)
        {
            BE(s)->copy_rows(BE(s), D(dst, s), sh[k].ds, D(src, s), sh[k].ss, rows, n);
            BE(s)->scale_rows(BE(s), D(y, s), D(x, s), scale, rows, n);
            BE(s)->scale_rows(BE(s), D(z, s), D(z, s), scale, rows, n); /* in place */
        }
        memset(scale, 0, rows * sizeof(float)); /* the host array is free once the call returned */
        SYNC(&t);
        free(scale);
        CHECK_CLOSE(&t, dst, TOL_FP32, "copy_rows rows=%d n=%zu", rows, n);
        CHECK_CLOSE(&t, y, TOL_FP32, "scale_rows rows=%d n=%zu", rows, n);
        CHECK_CLOSE(&t, z, TOL_FP32, "scale_rows in place rows=%d n=%zu", rows, n);
        gpu_end(&t);
    }
}

TEST(cuda_gelu)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 5))
        return;
    for (size_t k = 0; k < NLEN; k++) {
        size_t n = lengths[k];
        pair *x = pair_in(&t, n, 2), *y = pair_out(&t, n), *dy = pair_in(&t, n, 1),
             *dx = pair_out(&t, n);
        SIDES(s)
        {
            BE(s)->gelu_fwd(BE(s), D(y, s), D(x, s), n);
            BE(s)->gelu_bwd(BE(s), D(dx, s), D(x, s), D(dy, s), n);
            BE(s)->gelu_bwd(BE(s), D(dy, s), D(x, s), D(dy, s), n); /* in place, as dino.c */
        }
        SYNC(&t);
        CHECK_CLOSE(&t, y, TOL_FP32, "gelu_fwd n=%zu", n);
        CHECK_CLOSE(&t, dx, TOL_FP32, "gelu_bwd n=%zu", n);
        CHECK_CLOSE(&t, dy, TOL_FP32, "gelu_bwd in place n=%zu", n);
        gpu_end(&t);
    }
}

/* ---- GEMM ------------------------------------------------------------------------- */

static void gemm_check(const char *precision, double tol)
{
    gpu_test t;
    if (!gpu_begin(&t, precision, 6))
        return;
    static const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 65, 17}, {130, 257, 96},
                                    {197, 384, 1152}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int v = 0; v < 16; v++) {
            int M = shapes[k][0], N = shapes[k][1], K = shapes[k][2];
            bool ta = v & 1, tb = v & 2, beta1 = v & 4, batched = v & 8;
            int batch = batched ? 3 : 1;
            /* padded leading dimensions and gaps between batch entries */
            int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
            long sa = (long)(ta ? K : M) * lda + 5, sb = (long)(tb ? N : K) * ldb + 1,
                 sc = (long)M * ldc + 7;
            float beta = beta1 ? 0.5f : 0.0f;
            pair *A = pair_in(&t, sa * batch, 1), *B = pair_in(&t, sb * batch, 1);
            pair *C = beta1 ? pair_acc(&t, sc * batch, 1) : pair_out(&t, sc * batch);
            SIDES(s)
            BE(s)->gemm(BE(s), ta, tb, M, N, K, 1.3f, D(A, s), lda, sa, D(B, s), ldb, sb, beta,
                        D(C, s), ldc, sc, batch);
            SYNC(&t);
            CHECK_CLOSE(&t, C, tol, "%s gemm ta=%d tb=%d M=%d N=%d K=%d beta=%g batch=%d",
                        precision, ta, tb, M, N, K, beta, batch);
            gpu_end(&t);
        }
}

TEST(cuda_gemm_fp32) { gemm_check("fp32", TOL_FP32); }
TEST(cuda_gemm_tf32) { gemm_check("tf32", TOL_TF32); }
TEST(cuda_gemm_bf16) { gemm_check("bf16", TOL_BF16); }

/* shared weights: stride 0 for B, as a linear layer over a batch would */
TEST(cuda_gemm_stride0_and_empty)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 7))
        return;
    int M = 9, N = 11, K = 13, batch = 4;
    pair *A = pair_in(&t, (size_t)M * K * batch, 1), *B = pair_in(&t, (size_t)K * N, 1);
    pair *C = pair_out(&t, (size_t)M * N * batch), *E = pair_acc(&t, 12, 1);
    SIDES(s)
    {
        BE(s)->gemm(BE(s), false, false, M, N, K, 1.0f, D(A, s), K, (long)M * K, D(B, s), N, 0,
                    0.0f, D(C, s), N, (long)M * N, batch);
        /* K = 0: C = beta C */
        BE(s)->gemm(BE(s), false, false, 3, 4, 0, 1.0f, D(A, s), 1, 0, D(B, s), 4, 0, 0.5f,
                    D(E, s), 4, 0, 1);
    }
    SYNC(&t);
    CHECK_CLOSE(&t, C, TOL_FP32, "gemm stride 0");
    CHECK_CLOSE(&t, E, TOL_FP32, "gemm K=0");
    gpu_end(&t);
}

TEST(cuda_bias)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 8))
        return;
    static const int sh[][2] = {{1, 1}, {7, 33}, {300, 384}, {5, 1000}, {12611, 96}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int rows = sh[k][0], n = sh[k][1];
        pair *y = pair_in(&t, (size_t)rows * n, 1), *b = pair_in(&t, n, 1);
        pair *dy = pair_in(&t, (size_t)rows * n, 1), *db = pair_acc(&t, n, 1);
        SIDES(s)
        {
            BE(s)->bias_add(BE(s), D(y, s), D(b, s), rows, n);
            BE(s)->bias_grad(BE(s), D(db, s), D(dy, s), rows, n);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, y, TOL_FP32, "bias_add rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, db, TOL_FP32, "bias_grad rows=%d n=%d", rows, n);
        gpu_end(&t);
    }
}

/* ---- normalisation -------------------------------------------------------------------- */

static const int row_shapes[][2] = {{1, 7}, {13, 33}, {200, 384}, {3, 1031}, {2, 65536}};
#define NROWSH (sizeof row_shapes / sizeof row_shapes[0])

TEST(cuda_layernorm)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 9))
        return;
    for (size_t k = 0; k < NROWSH; k++) {
        int rows = row_shapes[k][0], n = row_shapes[k][1];
        size_t rn = (size_t)rows * n;
        pair *x = pair_in(&t, rn, 3), *w = pair_in(&t, n, 1), *b = pair_in(&t, n, 1);
        pair *y = pair_out(&t, rn), *mean = pair_out(&t, rows), *rstd = pair_out(&t, rows);
        pair *dy = pair_in(&t, rn, 1), *dx = pair_acc(&t, rn, 1), *dw = pair_acc(&t, n, 1),
             *db = pair_acc(&t, n, 1);
        SIDES(s)
        {
            BE(s)->layernorm_fwd(BE(s), D(y, s), D(mean, s), D(rstd, s), D(x, s), D(w, s),
                                 D(b, s), rows, n, 1e-6f);
            BE(s)->layernorm_bwd(BE(s), D(dx, s), D(dw, s), D(db, s), D(dy, s), D(x, s),
                                 D(w, s), D(mean, s), D(rstd, s), rows, n);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, y, TOL_FP32, "layernorm_fwd y rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, mean, TOL_FP32, "layernorm_fwd mean rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, rstd, TOL_FP32, "layernorm_fwd rstd rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dx, TOL_FP32, "layernorm_bwd dx rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dw, TOL_FP32, "layernorm_bwd dw rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, db, TOL_FP32, "layernorm_bwd db rows=%d n=%d", rows, n);
        gpu_end(&t);
    }
}

TEST(cuda_l2norm)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 10))
        return;
    for (size_t k = 0; k < NROWSH; k++) {
        int rows = row_shapes[k][0] + 1, n = row_shapes[k][1];
        size_t rn = (size_t)rows * n;
        pair *x = pair_in(&t, rn, 1);
        pair *y = pair_out(&t, rn), *nrm = pair_out(&t, rows), *dy = pair_in(&t, rn, 1),
             *dx = pair_out(&t, rn);
        /* the last row tiny (norm below eps: the linear branch of both
         * passes), its dy too, so that dy / eps stays of order 1 */
        for (int i = 0; i < n; i++) {
            x->h[(size_t)(rows - 1) * n + i] = 1e-16f;
            dy->h[(size_t)(rows - 1) * n + i] *= 1e-12f;
        }
        SIDES(s)
        {
            BE(s)->upload(BE(s), D(x, s), x->h, rn, NULL);
            BE(s)->upload(BE(s), D(dy, s), dy->h, rn, NULL);
        }
        SIDES(s)
        {
            BE(s)->l2norm_fwd(BE(s), D(y, s), D(nrm, s), D(x, s), rows, n, 1e-12f);
            BE(s)->l2norm_bwd(BE(s), D(dx, s), D(dy, s), D(y, s), D(nrm, s), rows, n, 1e-12f);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, y, TOL_FP32, "l2norm_fwd rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, nrm, TOL_FP32, "l2norm_fwd norms rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dx, TOL_FP32, "l2norm_bwd rows=%d n=%d", rows, n);
        gpu_end(&t);
    }
}

TEST(cuda_weightnorm)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 11))
        return;
    for (size_t k = 0; k < NROWSH; k++) {
        int rows = row_shapes[k][0], n = row_shapes[k][1];
        size_t rn = (size_t)rows * n;
        pair *g = pair_in(&t, rows, 1), *v = pair_in(&t, rn, 1), *w = pair_out(&t, rn),
             *nrm = pair_out(&t, rows), *dw = pair_in(&t, rn, 1), *dg = pair_acc(&t, rows, 1),
             *dv = pair_acc(&t, rn, 1), *dv2 = pair_acc(&t, rn, 1);
        SIDES(s)
        {
            BE(s)->weightnorm_fwd(BE(s), D(w, s), D(nrm, s), D(g, s), D(v, s), rows, n);
            BE(s)->weightnorm_bwd(BE(s), D(dg, s), D(dv, s), D(dw, s), D(g, s), D(v, s),
                                  D(nrm, s), rows, n);
            BE(s)->weightnorm_bwd(BE(s), NULL, D(dv2, s), D(dw, s), D(g, s), D(v, s), D(nrm, s),
                                  rows, n);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, w, TOL_FP32, "weightnorm_fwd rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, nrm, TOL_FP32, "weightnorm_fwd norms rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dg, TOL_FP32, "weightnorm_bwd dg rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dv, TOL_FP32, "weightnorm_bwd dv rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, dv2, TOL_FP32, "weightnorm_bwd dv (dg NULL) rows=%d n=%d", rows, n);
        gpu_end(&t);
    }
}

TEST(cuda_softmax)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 12))
        return;
    for (size_t k = 0; k < NROWSH; k++) {
        int rows = row_shapes[k][0], n = row_shapes[k][1];
        size_t rn = (size_t)rows * n;
        pair *x = pair_in(&t, rn, 1), *y = pair_out(&t, rn), *z = pair_in(&t, rn, 1);
        SIDES(s)
        {
            BE(s)->softmax_fwd(BE(s), D(y, s), D(x, s), 10.0f, rows, n);
            BE(s)->softmax_fwd(BE(s), D(z, s), D(z, s), 1.0f, rows, n); /* in place */
        }
        SYNC(&t);
        CHECK_CLOSE(&t, y, TOL_FP32, "softmax rows=%d n=%d", rows, n);
        CHECK_CLOSE(&t, z, TOL_FP32, "softmax in place rows=%d n=%d", rows, n);
        gpu_end(&t);
    }
}

/* ---- ViT pieces --------------------------------------------------------------------- */

TEST(cuda_patchify_tokens)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 13))
        return;
    static const int sh[][5] = {{1, 1, 4, 4, 2}, {2, 3, 10, 9, 3}, {3, 10, 16, 16, 8},
                                {2, 6, 224, 224, 16}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int B = sh[k][0], C = sh[k][1], H = sh[k][2], W = sh[k][3], p = sh[k][4];
        int np = (H / p) * (W / p), D = 5 + (int)k * 7, T = np + 1;
        size_t cols = (size_t)C * p * p;
        pair *img = pair_in(&t, (size_t)B * C * H * W, 1), *pt = pair_out(&t, B * np * cols);
        pair *patches = pair_in(&t, (size_t)B * np * D, 1), *cls = pair_in(&t, D, 1),
             *pos = pair_in(&t, (size_t)T * D, 1), *x = pair_out(&t, (size_t)B * T * D);
        pair *dx = pair_in(&t, (size_t)B * T * D, 1), *dpatches = pair_out(&t, (size_t)B * np * D),
             *dcls = pair_acc(&t, D, 1), *dpos = pair_acc(&t, (size_t)T * D, 1),
             *dcls2 = pair_acc(&t, D, 1), *dpos2 = pair_acc(&t, (size_t)T * D, 1);
        SIDES(s)
        {
            BE(s)->patchify(BE(s), D(pt, s), D(img, s), B, C, H, W, p);
            BE(s)->tokens_fwd(BE(s), D(x, s), D(patches, s), D(cls, s), D(pos, s), B, np, D);
            BE(s)->tokens_bwd(BE(s), D(dpatches, s), D(dcls, s), D(dpos, s), D(dx, s), B, np, D);
            BE(s)->tokens_bwd(BE(s), NULL, D(dcls2, s), D(dpos2, s), D(dx, s), B, np, D);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, pt, TOL_FP32, "patchify B=%d C=%d H=%d W=%d p=%d", B, C, H, W, p);
        CHECK_CLOSE(&t, x, TOL_FP32, "tokens_fwd B=%d np=%d D=%d", B, np, D);
        CHECK_CLOSE(&t, dpatches, TOL_FP32, "tokens_bwd dpatches B=%d np=%d D=%d", B, np, D);
        CHECK_CLOSE(&t, dcls, TOL_FP32, "tokens_bwd dcls B=%d np=%d D=%d", B, np, D);
        CHECK_CLOSE(&t, dpos, TOL_FP32, "tokens_bwd dpos B=%d np=%d D=%d", B, np, D);
        CHECK_CLOSE(&t, dcls2, TOL_FP32, "tokens_bwd (no dpatches) dcls");
        CHECK_CLOSE(&t, dpos2, TOL_FP32, "tokens_bwd (no dpatches) dpos");
        gpu_end(&t);
    }
}

TEST(cuda_posinterp)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 14))
        return;
    /* up, down, odd, and identity sizes of the grid */
    static const int sh[][3] = {{4, 7, 7}, {14, 12, 12}, {5, 3, 8}, {28, 15, 15}, {6, 6, 6}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int g = sh[k][0], oh = sh[k][1], ow = sh[k][2], D = 3 + 8 * (int)k;
        double sh_ = (double)oh / g, sw = (double)ow / g;
        pair *pos = pair_in(&t, (size_t)(1 + g * g) * D, 1),
             *out = pair_out(&t, (size_t)(1 + oh * ow) * D);
        pair *dout = pair_in(&t, (size_t)(1 + oh * ow) * D, 1),
             *dpos = pair_acc(&t, (size_t)(1 + g * g) * D, 1);
        SIDES(s)
        {
            BE(s)->posinterp_fwd(BE(s), D(out, s), D(pos, s), g, oh, ow, sh_, sw, D);
            BE(s)->posinterp_bwd(BE(s), D(dpos, s), D(dout, s), g, oh, ow, sh_, sw, D);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, out, TOL_FP32, "posinterp_fwd g=%d oh=%d ow=%d D=%d", g, oh, ow, D);
        CHECK_CLOSE(&t, dpos, TOL_FP32, "posinterp_bwd g=%d oh=%d ow=%d D=%d", g, oh, ow, D);
        gpu_end(&t);
    }
}

static void attention_check(const char *precision, double tol)
{
    gpu_test t;
    if (!gpu_begin(&t, precision, 15))
        return;
    static const int sh[][4] = {{1, 1, 1, 1}, {2, 5, 3, 4}, {3, 17, 2, 32}, {2, 50, 6, 64},
                                {2, 197, 6, 64}};
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int B = sh[k][0], T = sh[k][1], H = sh[k][2], hd = sh[k][3], Dm = H * hd;
        size_t natt = (size_t)B * H * T * T;
        pair *qkv = pair_in(&t, (size_t)B * T * 3 * Dm, 1), *out = pair_out(&t, (size_t)B * T * Dm),
             *att = pair_out(&t, natt);
        pair *dout = pair_in(&t, (size_t)B * T * Dm, 1), *dqkv = pair_out(&t, (size_t)B * T * 3 * Dm),
             *scr = pair_out(&t, natt);
        SIDES(s)
        {
            BE(s)->attention_fwd(BE(s), D(out, s), D(att, s), D(qkv, s), B, T, H, hd);
            BE(s)->attention_bwd(BE(s), D(dqkv, s), D(scr, s), D(dout, s), D(qkv, s), D(att, s),
                                 B, T, H, hd);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, att, tol, "%s attention_fwd att B=%d T=%d H=%d hd=%d", precision, B, T,
                    H, hd);
        CHECK_CLOSE(&t, out, tol, "%s attention_fwd out B=%d T=%d H=%d hd=%d", precision, B, T,
                    H, hd);
        CHECK_CLOSE(&t, dqkv, tol, "%s attention_bwd B=%d T=%d H=%d hd=%d", precision, B, T, H,
                    hd);
        gpu_end(&t);
    }
}

TEST(cuda_attention_fp32) { attention_check("fp32", TOL_FP32); }
TEST(cuda_attention_tf32) { attention_check("tf32", TOL_TF32); }
TEST(cuda_attention_bf16) { attention_check("bf16", TOL_BF16); }

/* ---- DINO loss ---------------------------------------------------------------------- */

TEST(cuda_dino_loss_pieces)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 16))
        return;
    static const int sh[][3] = {{1, 2, 7}, {3, 4, 1000}, {2, 10, 65536}, {5, 3, 4097}}; /* B, S, K */
    for (size_t k = 0; k < sizeof sh / sizeof sh[0]; k++) {
        int B = sh[k][0], S = sh[k][1], K = sh[k][2], G = 2;
        pair *tout = pair_in(&t, (size_t)G * B * K, 1), *center = pair_in(&t, K, 0.3),
             *q = pair_out(&t, (size_t)G * B * K);
        pair *sout = pair_in(&t, (size_t)S * B * K, 1), *loss = pair_out(&t, 1),
             *ds = pair_out(&t, (size_t)S * B * K), *loss2 = pair_out(&t, 1);
        pair *c2 = pair_in(&t, K, 0.3), *sum = pair_out(&t, 1);
        SIDES(s)
        {
            BE(s)->dino_teacher_probs(BE(s), D(q, s), D(tout, s), D(center, s), 0.04f, G * B, K);
            BE(s)->dino_loss(BE(s), D(loss, s), D(ds, s), D(sout, s), D(q, s), G, S, B, K, 0.1f);
            BE(s)->dino_loss(BE(s), D(loss2, s), NULL, D(sout, s), D(q, s), G, S, B, K, 0.1f);
            BE(s)->center_update(BE(s), D(c2, s), D(tout, s), G * B, K, 0.9f);
            BE(s)->sum(BE(s), D(sum, s), D(sout, s), (size_t)S * B * K);
        }
        SYNC(&t);
        CHECK_CLOSE(&t, q, TOL_FP32, "dino_teacher_probs B=%d K=%d", B, K);
        CHECK_CLOSE(&t, loss, TOL_FP32, "dino_loss B=%d S=%d K=%d", B, S, K);
        CHECK_CLOSE(&t, ds, TOL_FP32, "dino_loss ds B=%d S=%d K=%d", B, S, K);
        CHECK_CLOSE(&t, loss2, TOL_FP32, "dino_loss (no ds) B=%d S=%d K=%d", B, S, K);
        CHECK_CLOSE(&t, c2, TOL_FP32, "center_update B=%d K=%d", B, K);
        CHECK_CLOSE(&t, sum, TOL_FP32, "sum n=%d", S * B * K);
        gpu_end(&t);
    }
}

/* ---- optimisation ------------------------------------------------------------------ */

TEST(cuda_clip_adamw_ema)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 17))
        return;
    /* tensors of very different sizes and norms, back to back in one buffer */
    static const size_t len[] = {1, 7, 384, 65536, 1000003, 3};
    static const double sd[] = {10, 0.01, 1, 0.001, 0.01, 5};
    enum { NT = sizeof len / sizeof len[0] };
    size_t off[NT], total = 0;
    for (int i = 0; i < NT; i++)
        off[i] = total, total += len[i];
    float *h = malloc(total * sizeof(float));
    for (int i = 0; i < NT; i++)
        for (size_t j = 0; j < len[i]; j++)
            h[off[i] + j] = (float)(rng_normal(&t.r) * sd[i]);
    pair *g = pair_from(&t, h, total);
    free(h);
    double norms[2][NT];
    SIDES(s)
    {
        gd_err err;
        CHECK_MSG(BE(s)->clip_per_tensor(BE(s), D(g, s), off, len, NT, 3.0f, norms[s], &err) == 0,
                  "%s: %s", BE(s)->name, err.msg);
    }
    SYNC(&t);
    for (int i = 0; i < NT; i++)
        CHECK_MSG(fabs(norms[GPU][i] - norms[CPU][i]) <= 1e-9 * norms[CPU][i],
                  "norm of tensor %d: %.17g, CPU %.17g", i, norms[GPU][i], norms[CPU][i]);
    CHECK_CLOSE(&t, g, TOL_FP32, "clip_per_tensor");

    size_t n = total;
    pair *p = pair_in(&t, n, 1), *m = pair_acc(&t, n, 0.01), *v = pair_in(&t, n, 0.01);
    SIDES(s) BE(s)->fill(BE(s), D(v, s), 1e-4f, n); /* a second moment is positive */
    pair *tch = pair_in(&t, n, 1);
    for (int step = 1; step <= 5; step += 4)
        SIDES(s)
        {
            BE(s)->adamw(BE(s), D(p, s), D(g, s), D(m, s), D(v, s), n, 5e-4f, step == 1 ? 0.04f : 0,
                         0.9f, 0.999f, 1e-8f, step);
            BE(s)->ema(BE(s), D(tch, s), D(p, s), 0.996f, n);
        }
    SYNC(&t);
    CHECK_CLOSE(&t, p, TOL_FP32, "adamw p");
    CHECK_CLOSE(&t, m, TOL_FP32, "adamw m");
    CHECK_CLOSE(&t, v, TOL_FP32, "adamw v");
    CHECK_CLOSE(&t, tch, TOL_FP32, "ema");
    gpu_end(&t);
}

/* The fused step in one launch (a binary search per element for its
 * tensor) against the CPU's tensor-by-tensor loop: gaps, a frozen range,
 * tensors on both sides of block boundaries; the same bits. */
TEST(cuda_adamw_ema)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 31))
        return;
    const size_t n = 1000003;
    const gd_adam_tensor tab[] = {{.off = 0, .n = 1, .wd = 0.04f, .step = 1},
                                  {.off = 5, .n = 250, .wd = 0, .step = 2},
                                  {.off = 256, .n = 700000, .wd = 0.04f, .step = 9},
                                  /* 700256..800000 frozen */
                                  {.off = 800000, .n = 200003, .wd = 0.04f, .step = 9}};
    const int nt = sizeof tab / sizeof tab[0];
    pair *p = pair_in(&t, n, 1), *g = pair_in(&t, n, 0.01), *m = pair_acc(&t, n, 0.01);
    pair *v = pair_in(&t, n, 0.01), *tch = pair_in(&t, n, 1);
    SIDES(s) BE(s)->fill(BE(s), D(v, s), 1e-4f, n); /* a second moment is positive */
    for (int rep = 0; rep < 2; rep++)
        SIDES(s)
        BE(s)->adamw_ema(BE(s), D(p, s), D(g, s), D(m, s), D(v, s), D(tch, s), n, tab, nt, 5e-4f,
                         0.9f, 0.999f, 1e-8f, 0.996f);
    SYNC(&t);
    CHECK_CLOSE(&t, p, 0, "adamw_ema p");
    CHECK_CLOSE(&t, m, 0, "adamw_ema m");
    CHECK_CLOSE(&t, v, 0, "adamw_ema v");
    CHECK_CLOSE(&t, tch, 0, "adamw_ema teacher");
    gpu_end(&t);
}

TEST(cuda_all_finite_and_sum)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 18))
        return;
    for (size_t k = 0; k < NLEN; k++) {
        size_t n = lengths[k];
        pair *x = pair_in(&t, n, 1), *sum = pair_out(&t, 1);
        SIDES(s) BE(s)->sum(BE(s), D(sum, s), D(x, s), n);
        SYNC(&t);
        CHECK_CLOSE(&t, sum, TOL_FP32, "sum n=%zu", n);
        for (int bad = 0; bad < 3; bad++) {
            if (bad) {
                x->h[n / 2 + (n > 2)] = bad == 1 ? NAN : -INFINITY;
                SIDES(s) BE(s)->upload(BE(s), D(x, s), x->h, n, NULL);
            }
            int fin[2] = {-1, -1};
            gd_err err;
            SIDES(s)
            CHECK_MSG(BE(s)->all_finite(BE(s), D(x, s), n, &fin[s], &err) == 0, "%s", err.msg);
            CHECK_MSG(fin[GPU] == fin[CPU] && fin[CPU] == !bad, "n=%zu bad=%d: gpu %d, cpu %d", n,
                      bad, fin[GPU], fin[CPU]);
        }
        gpu_end(&t);
    }
    /* the empty sum */
    pair *z = pair_out(&t, 1), *x = pair_in(&t, 1, 1);
    SIDES(s) BE(s)->sum(BE(s), D(z, s), D(x, s), 0);
    SYNC(&t);
    CHECK_CLOSE(&t, z, TOL_FP32, "sum n=0");
    gpu_end(&t);
}

/* ---- errors -------------------------------------------------------------------------- */

/* A failed op is recorded with its name and shapes and reported by sync
 * (a backend of its own: the error stays reported). */
TEST(cuda_errors_reported)
{
    if (gpu_selftest()) {
        test_skip("self-test: needs the GPU");
        return;
    }
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 19))
        return;
    gd_err err = {{0}};
    CHECK(gd_backend_cuda(0, "fp16", &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "fp16");
    CHECK(gd_backend_cuda(999, "fp32", &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "999");
    gd_backend *be = gd_backend_cuda(0, "fp32", &err);
    CHECK_MSG(be, "%s", err.msg);
    float *a = be->alloc(be, 64, &err);
    CHECK_MSG(a, "%s", err.msg);
    CHECK(be->sync(be, &err) == 0);
    be->gemm(be, false, false, 2, 2, 2, 1.0f, a, 2, -1, a, 2, 0, 0.0f, a + 32, 2, 0, 2);
    int rc = be->sync(be, &err);
    be->release(be, a);
    int rc2 = be->sync(be, &err);
    gd_backend_cuda_free(be);
    CHECK(rc == -1);
    CHECK_STR_CONTAINS(err.msg, "gemm(");
    CHECK_STR_CONTAINS(err.msg, "M=2");
    CHECK_MSG(rc2 == -1, "the error must stay reported");
}
