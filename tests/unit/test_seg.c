/* Segmentation ops (kernels/cpu/seg_ops.c) against float64 references and
 * central finite differences; the segmentation model's decoder gradient
 * against finite differences of its own loss. */
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

/* ---- bilinear ------------------------------------------------------------- */

TEST(seg_bilinear_matches_torch_values)
{
    /* torch.nn.functional.interpolate(arange(6).reshape(1,1,2,3), size, mode="bilinear",
     * align_corners=False), printed by torch 2 */
    static const float up[15] = {0.0f, 0.4f, 1.0f, 1.6f, 2.0f, 1.5f, 1.9f, 2.5f,
                                 3.1f, 3.5f, 3.0f, 3.4f, 4.0f, 4.6f, 5.0f};
    static const float down[2] = {1.75f, 3.25f};
    float x[6] = {0, 1, 2, 3, 4, 5}, y[15];
    float *dx = tu_dev_of(x, 6), *dy = be()->alloc(be(), 15, NULL);
    be()->bilinear_fwd(be(), dy, dx, 1, 2, 3, 3, 5, 1);
    tu_host_from(y, dy, 15);
    for (int i = 0; i < 15; i++)
        CHECK_NEAR(y[i], up[i], 1e-6);
    be()->bilinear_fwd(be(), dy, dx, 1, 2, 3, 1, 2, 1);
    tu_host_from(y, dy, 2);
    CHECK_NEAR(y[0], down[0], 1e-6);
    CHECK_NEAR(y[1], down[1], 1e-6);
    be()->release(be(), dx), be()->release(be(), dy);
}

/* <bwd(g), x> == <g, fwd(x)> for channels-last maps, up and down */
TEST(seg_bilinear_backward_is_the_adjoint)
{
    rng r;
    rng_init(&r, 11, 0, 0, 0);
    int shapes[][6] = {{2, 3, 4, 7, 9, 3}, {1, 6, 6, 4, 3, 2}, {3, 1, 5, 2, 5, 1}};
    for (int s = 0; s < 3; s++) {
        int B = shapes[s][0], h = shapes[s][1], w = shapes[s][2], H = shapes[s][3],
            W = shapes[s][4], C = shapes[s][5];
        size_t ni = (size_t)B * h * w * C, no = (size_t)B * H * W * C;
        float *x = malloc(ni * 4), *g = malloc(no * 4), *y = malloc(no * 4), *dx = malloc(ni * 4);
        tu_fill_normal(&r, x, ni, 1);
        tu_fill_normal(&r, g, no, 1);
        float *Dx = tu_dev_of(x, ni), *Dg = tu_dev_of(g, no), *Dy = be()->alloc(be(), no, NULL);
        float *Ddx = be()->alloc(be(), ni, NULL);
        be()->fill(be(), Ddx, 7.0f, ni); /* overwritten, not accumulated */
        be()->bilinear_fwd(be(), Dy, Dx, B, h, w, H, W, C);
        be()->bilinear_bwd(be(), Ddx, Dg, B, h, w, H, W, C);
        tu_host_from(y, Dy, no);
        tu_host_from(dx, Ddx, ni);
        double a = 0, b = 0;
        for (size_t i = 0; i < ni; i++)
            a += (double)dx[i] * x[i];
        for (size_t i = 0; i < no; i++)
            b += (double)g[i] * y[i];
        CHECK_NEAR(a, b, 1e-5);
        free(x), free(g), free(y), free(dx);
        be()->release(be(), Dx), be()->release(be(), Dg), be()->release(be(), Dy),
            be()->release(be(), Ddx);
    }
}

/* ---- cross-entropy with ignore ------------------------------------------------- */

static double ref_ce(const double *x, const float *lab, const float *w, int rows, int K)
{
    double s = 0, sw = 0;
    for (int r = 0; r < rows; r++) {
        int c = (int)lab[r];
        if (lab[r] < 0 || c >= K)
            continue;
        double m = -INFINITY, z = 0;
        for (int k = 0; k < K; k++)
            m = fmax(m, x[r * K + k]);
        for (int k = 0; k < K; k++)
            z += exp(x[r * K + k] - m);
        double wc = w ? w[c] : 1;
        s += wc * (m + log(z) - x[r * K + c]);
        sw += wc;
    }
    return sw > 0 ? s / sw : 0;
}

TEST(seg_ce_ignore_weights_forward_and_gradient)
{
    rng r;
    rng_init(&r, 12, 0, 0, 0);
    enum { R = 9, K = 4 };
    float x[R * K], g[R * K], loss[2];
    float lab[R] = {0, 3, 255, 1, 2, 255, 3, 0, 1}, w[K] = {0.5f, 2.0f, 1.0f, 1.5f};
    tu_fill_normal(&r, x, R * K, 2);
    double xd[R * K];
    for (int i = 0; i < R * K; i++)
        xd[i] = x[i];
    for (int wi = 0; wi < 2; wi++) {
        const float *wp = wi ? w : NULL;
        float *Dx = tu_dev_of(x, R * K), *Dl = tu_dev_of(lab, R), *Dw = tu_dev_of(w, K);
        float *Dg = be()->alloc(be(), R * K, NULL), *Dloss = be()->alloc(be(), 2, NULL);
        be()->seg_ce(be(), Dloss, Dg, Dx, Dl, wp ? Dw : NULL, R, K, 0.5f);
        tu_host_from(loss, Dloss, 2);
        tu_host_from(g, Dg, R * K);
        CHECK_NEAR(loss[0], ref_ce(xd, lab, wp, R, K), 1e-6);
        CHECK_NEAR(loss[1], wp ? 0.5 + 1.5 + 2 + 1 + 1.5 + 0.5 + 2 : 7, 1e-6);
        for (int i = 0; i < R * K; i++) {
            double x0 = xd[i], h = 1e-5;
            xd[i] = x0 + h;
            double fp = ref_ce(xd, lab, wp, R, K);
            xd[i] = x0 - h;
            double fm = ref_ce(xd, lab, wp, R, K);
            xd[i] = x0;
            CHECK_NEAR(g[i], 0.5 * (fp - fm) / (2 * h), 1e-5);
        }
        for (int k = 0; k < K; k++) /* ignored rows have no gradient */
            CHECK(g[2 * K + k] == 0 && g[5 * K + k] == 0);
        be()->release(be(), Dx), be()->release(be(), Dl), be()->release(be(), Dw),
            be()->release(be(), Dg), be()->release(be(), Dloss);
    }
}

/* ---- prototype loss -------------------------------------------------------------- */

static void log_softmax(const double *x, double t, int n, double *out)
{
    double m = -INFINITY, z = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, x[i] / t);
    for (int i = 0; i < n; i++)
        z += exp(x[i] / t - m);
    for (int i = 0; i < n; i++)
        out[i] = x[i] / t - m - log(z);
}

/* the definition, row by row, in float64 */
static double ref_proto(const double *f, const double *p, const float *lab, int rows, int D,
                        int K, double T, double alpha)
{
    double s = 0, ls[64], lq[64], l1[64], pd[64];
    int n = 0;
    for (int r = 0; r < rows; r++) {
        if (lab[r] < 0 || lab[r] >= K)
            continue;
        int c = (int)lab[r], hard = 0;
        for (int d = 0; d < D; d++) {
            pd[d] = p[c * D + d];
            hard = pd[d] > pd[hard] ? d : hard;
        }
        log_softmax(f + r * D, T, D, ls);
        log_softmax(pd, T, D, lq);
        log_softmax(f + r * D, 1, D, l1);
        double kl = 0;
        for (int d = 0; d < D; d++)
            kl += exp(lq[d]) * (lq[d] - ls[d]);
        s += alpha * T * T * kl - (1 - alpha) * l1[hard];
        n++;
    }
    return n ? s / n : 0;
}

TEST(seg_proto_loss_forward_and_finite_differences)
{
    rng r;
    rng_init(&r, 13, 0, 0, 0);
    enum { R = 6, D = 8, K = 3 };
    float f[R * D], p[K * D], g[R * D], loss[2], lab[R] = {2, 255, 0, 1, 2, 255};
    double fd[R * D], pdd[K * D];
    tu_fill_normal(&r, f, R * D, 3);
    tu_fill_normal(&r, p, K * D, 3);
    for (int i = 0; i < R * D; i++)
        fd[i] = f[i];
    for (int i = 0; i < K * D; i++)
        pdd[i] = p[i];
    /* T = 20 and alpha = 0.9 as Trans4PASS; T = 2 to exercise the KL more */
    double temps[2] = {20, 2};
    for (int ti = 0; ti < 2; ti++) {
        double T = temps[ti];
        float *Df = tu_dev_of(f, R * D), *Dp = tu_dev_of(p, K * D), *Dl = tu_dev_of(lab, R);
        float *Dg = be()->alloc(be(), R * D, NULL), *Dloss = be()->alloc(be(), 2, NULL);
        be()->proto_loss(be(), Dloss, Dg, Df, Dp, Dl, R, D, K, (float)T, 0.9f, 0.25f);
        tu_host_from(loss, Dloss, 2);
        tu_host_from(g, Dg, R * D);
        CHECK_NEAR(loss[0], ref_proto(fd, pdd, lab, R, D, K, T, 0.9), 1e-5);
        CHECK(loss[1] == 4);
        for (int i = 0; i < R * D; i++) {
            double x0 = fd[i], h = 1e-5;
            fd[i] = x0 + h;
            double fp = ref_proto(fd, pdd, lab, R, D, K, T, 0.9);
            fd[i] = x0 - h;
            double fm = ref_proto(fd, pdd, lab, R, D, K, T, 0.9);
            fd[i] = x0;
            CHECK_MSG(fabs(g[i] - 0.25 * (fp - fm) / (2 * h)) < 1e-5,
                      "T %g, element %d: %g vs %g", T, i, g[i], 0.25 * (fp - fm) / (2 * h));
        }
        be()->release(be(), Df), be()->release(be(), Dp), be()->release(be(), Dl),
            be()->release(be(), Dg), be()->release(be(), Dloss);
    }
}

TEST(seg_class_sums_by_hand)
{
    /* rows (D = 2) with labels 1, 0, 1, ignore, 1 */
    float f[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, lab[5] = {1, 0, 1, 255, 1};
    float sums[6], counts[3];
    float *Df = tu_dev_of(f, 10), *Dl = tu_dev_of(lab, 5);
    float *Ds = be()->alloc(be(), 6, NULL), *Dc = be()->alloc(be(), 3, NULL);
    be()->fill(be(), Ds, 1.0f, 6); /* accumulates */
    be()->class_sums(be(), Ds, Dc, Df, Dl, 5, 2, 3);
    tu_host_from(sums, Ds, 6);
    tu_host_from(counts, Dc, 3);
    float want[6] = {1 + 3, 1 + 4, 1 + 1 + 5 + 9, 1 + 2 + 6 + 10, 1, 1};
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(sums[i], want[i], 0);
    CHECK(counts[0] == 1 && counts[1] == 3 && counts[2] == 0);
    be()->release(be(), Df), be()->release(be(), Dl), be()->release(be(), Ds),
        be()->release(be(), Dc);
}

/* ---- the model: decoder + bilinear backward against finite differences ---------- */

TEST(seg_model_decoder_gradient_matches_finite_differences)
{
    msg *ck = tu_tiny_checkpoint(2);
    CHECK(ck);
    gd_err err;
    seg_cfg c = {.levels = {1, 2}, .nlevels = 2, .emb_chans = 5, .num_classes = 3,
                 .role = DINO_TEACHER};
    seg_model *s = seg_model_from_dino(be(), ck, &c, 3, 1, &err);
    CHECK_MSG(s, "%s", err.msg);
    msg_free(ck);
    enum { N = 3, S = 12, C = 2, K = 3, E = 5 };
    rng r;
    rng_init(&r, 14, 0, 0, 0);
    float img[N * C * S * S], protos[K * E];
    uint8_t lab[N * S * S];
    tu_fill_normal(&r, img, N * C * S * S, 1);
    tu_fill_normal(&r, protos, K * E, 1);
    for (int i = 0; i < N * S * S; i++)
        lab[i] = rng_below(&r, 5) == 0 ? SEG_IGNORE : (uint8_t)rng_below(&r, K);
    float cw[K] = {1.0f, 0.5f, 2.0f};
    seg_loss_opts o = {.class_weights = cw, .protos = protos, .lambda_proto = 0.3, .temp = 2,
                       .alpha = 0.9, .weight = 1};
    seg_losses l;
    size_t n;
    float *P = seg_model_params(s, &n), *G = seg_model_grads(s, &n);
    seg_zero_grad(s);
    CHECK_MSG(seg_batch_loss(s, img, lab, N, S, &o, true, &l, &err) == 0, "%s", err.msg);
    CHECK(l.proto > 0 && l.ce > 0);
    float *g = malloc(n * sizeof *g), *p = malloc(n * sizeof *p);
    tu_host_from(g, G, n);
    tu_host_from(p, P, n);
    /* every 7th float of the decoder (weights and biases of every layer) */
    int checked = 0;
    for (size_t i = 0; i < n; i += 7) {
        double fdv = tu_seg_fd(s, P + i, 1e-2, img, lab, N, S, &o);
        CHECK_MSG(fabs(g[i] - fdv) < 2e-3 + 2e-2 * fabs(fdv), "float %zu: %g vs fd %g", i, g[i],
                  fdv);
        checked++;
    }
    CHECK(checked > 20);
    free(g), free(p);
    seg_model_free(s);
}

TEST(seg_model_saves_and_loads_the_same_predictions)
{
    msg *ck = tu_tiny_checkpoint(3);
    CHECK(ck);
    gd_err err;
    seg_cfg c = {.emb_chans = 4, .num_classes = 2, .role = DINO_STUDENT};
    CHECK(seg_parse_levels(&c, "1,3", 3, &err) == 0);
    CHECK(seg_parse_levels(&c, "1,4", 3, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "outside 1..3");
    CHECK(seg_parse_levels(&c, "2,2", 3, &err) == -1);
    CHECK(seg_parse_levels(&c, "1,3", 3, &err) == 0 && c.nlevels == 2 && c.levels[1] == 3);
    seg_model *s = seg_model_from_dino(be(), ck, &c, 2, 9, &err);
    CHECK_MSG(s, "%s", err.msg);
    msg_free(ck);
    enum { S = 8, C = 2, K = 2 };
    float img[2 * C * S * S], a[2 * S * S * K], b[2 * S * S * K];
    rng r;
    rng_init(&r, 15, 0, 0, 0);
    tu_fill_normal(&r, img, 2 * C * S * S, 1);
    CHECK(seg_predict(s, img, 2, S, S, a, &err) == 0);
    msg *m = seg_model_save(s, 5, &err);
    CHECK_MSG(m, "%s", err.msg);
    seg_model *t = seg_model_load(be(), m, 2, &err);
    CHECK_MSG(t, "%s", err.msg);
    CHECK(seg_model_cfg(t)->role == DINO_STUDENT && seg_model_cfg(t)->nlevels == 2);
    CHECK(seg_predict(t, img, 2, S, S, b, &err) == 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* probabilities sum to one, also through a resize (S2 = 12) */
    CHECK(seg_predict(t, img, 2, S, 12, b, &err) == 0);
    for (int i = 0; i < 2 * S * S; i++)
        CHECK_NEAR(b[2 * i] + b[2 * i + 1], 1.0, 1e-5);
    /* a wrong tensor shape is refused, naming it */
    tensor *x = (tensor *)msg_get_tensor(m, "decoder/pred/weight");
    x->shape[0] = 3;
    CHECK(seg_model_load(be(), m, 2, &err) == NULL);
    CHECK_STR_CONTAINS(err.msg, "decoder/pred/weight");
    msg_free(m);
    seg_model_free(s), seg_model_free(t);
}

/* Fine-tuning: the gradient of backbone tensors (through the levels'
 * projections, the final LayerNorm, the blocks, the interpolated position
 * embedding and the patch embedding) against finite differences. */
TEST(seg_model_backbone_gradient_matches_finite_differences)
{
    msg *ck = tu_tiny_checkpoint(3);
    CHECK(ck);
    gd_err err;
    seg_cfg c = {.levels = {1, 2}, .nlevels = 2, .emb_chans = 5, .num_classes = 3,
                 .role = DINO_TEACHER};
    seg_model *s = seg_model_from_dino(be(), ck, &c, 2, 1, &err);
    CHECK_MSG(s, "%s", err.msg);
    msg_free(ck);
    seg_model_set_finetune(s, true, 1.0);
    /* a 3 x 3 token grid: the 2 x 2 position grid is interpolated */
    enum { N = 2, S = 12, C = 2, K = 3, E = 5 };
    rng r;
    rng_init(&r, 16, 0, 0, 0);
    float img[N * C * S * S], protos[K * E];
    uint8_t lab[N * S * S];
    tu_fill_normal(&r, img, N * C * S * S, 1);
    tu_fill_normal(&r, protos, K * E, 1);
    for (int i = 0; i < N * S * S; i++)
        lab[i] = (uint8_t)rng_below(&r, K);
    seg_loss_opts o = {.protos = protos, .lambda_proto = 0.3, .temp = 2, .alpha = 0.9, .weight = 1};
    seg_losses l;
    CHECK_MSG(seg_batch_loss(s, img, lab, N, S, &o, false, &l, &err) == 0, "%s", err.msg);
    seg_zero_grad(s);
    CHECK(seg_batch_loss(s, img, lab, N, S, &o, true, &l, &err) == 0);
    static const char *names[] = {
        "backbone/patch_embed/proj/weight", "backbone/pos_embed", "backbone/cls_token",
        "backbone/blocks/0/attn/qkv/weight", "backbone/blocks/1/mlp/fc2/bias",
        "backbone/blocks/1/norm1/weight",   "backbone/norm/weight", "backbone/norm/bias"};
    for (int t = 0; t < 8; t++) {
        float *P, *G;
        size_t n;
        CHECK_MSG(seg_backbone_tensor(s, S, names[t], &P, &G, &n, &err) == 0, "%s", err.msg);
        float *g = malloc(n * sizeof *g), *p = malloc(n * sizeof *p);
        tu_host_from(g, G, n);
        tu_host_from(p, P, n);
        double gmax = 0;
        for (size_t i = 0; i < n; i++)
            gmax = fmax(gmax, fabs(g[i]));
        CHECK_MSG(gmax > 1e-6 || !strcmp(names[t], "backbone/cls_token"),
                  "%s: no gradient at all", names[t]);
        for (size_t i = 0; i < n; i += 1 + n / 6) {
            double fdv = tu_seg_fd(s, P + i, 1e-2, img, lab, N, S, &o);
            CHECK_MSG(fabs(g[i] - fdv) < 2e-3 + 3e-2 * fabs(fdv), "%s[%zu]: %g vs fd %g", names[t],
                      i, g[i], fdv);
        }
        free(g), free(p);
    }
    /* a step moves the backbone, and a save carries the moved weights */
    float *P, *G;
    size_t n;
    CHECK(seg_backbone_tensor(s, S, "backbone/norm/weight", &P, &G, &n, &err) == 0);
    float before, after;
    tu_host_from(&before, P, 1);
    CHECK(seg_step(s, SEG_ADAMW, 0.01, 0, 0, &err) == 0);
    tu_host_from(&after, P, 1);
    CHECK(before != after);
    msg *m = seg_model_save(s, 1, &err);
    CHECK(m);
    const tensor *x = msg_get_tensor(m, "backbone/norm/weight");
    CHECK(x && ((const float *)x->data)[0] == after);
    CHECK_STR_CONTAINS(value_str(&m->meta, "seg/backbone", ""), "fine-tuned");
    msg_free(m);
    seg_model_free(s);
}
