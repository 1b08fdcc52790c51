/* The whole DINO model on the GPU against the CPU: the loss and every
 * gradient of one forward/backward, then two whole training steps (center,
 * clipping, AdamW moments, teacher EMA), and the PyTorch fixture replayed
 * on the GPU (tests/unit/parity.c).
 *
 * After a step the student is compared element by element to within
 * 2 lr: Adam divides a gradient by its own magnitude, so a gradient that is
 * zero in exact arithmetic (the attention key bias) moves a weight by up to
 * lr in any float32 implementation (see parity.c).  That bound alone would
 * let a wrong gradient through, so the gradients themselves and the Adam
 * moments are compared in relative L2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/device.h"
#include "dino.h"
#include "halfprec.h"
#include "trainer.h"
#include "gpu.h"
#include "../unit/parity.h"

/* A model, its views and a batch size. */
#define MAX_VIEWS 12
typedef struct step_case {
    const char *name;
    dino_model_cfg m;
    int nv, res[MAX_VIEWS], batch;
    double clip;
} step_case;

/* Two global views of 32 (the native 4 x 4 grid of patch 8), three local
 * views of 16 (2 x 2, through the bicubic position path) and one of 24;
 * clipping low enough that some tensors are clipped. */
static const step_case SMALL = {
    .name = "small",
    .m = {.img_size = 32, .patch = 8, .in_chans = 4, .embed_dim = 48, .depth = 2,
          .num_heads = 3, .mlp_ratio = 4, .ln_eps = 1e-6f, .drop_path_rate = 0.2f,
          .out_dim = 1000, .hidden_dim = 64, .bottleneck_dim = 32, .norm_last_layer = false},
    .nv = 6, .res = {32, 32, 16, 16, 16, 24}, .batch = 3, .clip = 0.3};

/* issue 6's two recipes at their real sizes, 2 images per batch: DINO's
 * ImageNet recipe (vit_small/16, 2 x 224 + 10 x 96, 3 bands) and the
 * Sentinel-2 one (vit_small/8, 2 x 120 + 6 x 56, 10 bands); DINO's head
 * (65536 outputs) and clipping (3.0) */
static step_case recipe(bool s2)
{
    step_case c = {
        .name = s2 ? "vit_small/8 s2" : "vit_small/16 imagenet",
        .m = {.img_size = s2 ? 120 : 224, .patch = s2 ? 8 : 16, .in_chans = s2 ? 10 : 3,
              .embed_dim = 384, .depth = 12, .num_heads = 6, .mlp_ratio = 4, .ln_eps = 1e-6f,
              .drop_path_rate = 0.1f, .out_dim = 65536, .hidden_dim = 2048,
              .bottleneck_dim = 256, .norm_last_layer = true},
        .nv = s2 ? 8 : 12, .batch = 2, .clip = 3.0};
    for (int v = 0; v < c.nv; v++)
        c.res[v] = v < 2 ? c.m.img_size : s2 ? 56 : 96;
    return c;
}

static dino_train_cfg train_cfg(const step_case *k)
{
    dino_train_cfg c;
    dino_train_defaults(&c);
    c.batch_size_total = k->batch;
    c.epochs = 10;
    c.niter_per_epoch = 10;
    c.warmup_epochs = 0;
    c.freeze_last_layer = 0;
    c.clip_grad = k->clip;
    return c;
}

typedef struct side {
    gd_backend *be;
    dino_trainer *t;
    const step_case *k;
    float *views[MAX_VIEWS];
} side;

static int side_open(side *s, const step_case *k, gd_backend *be, const float *const *host,
                     gd_err *err)
{
    dino_train_cfg c = train_cfg(k);
    s->be = be;
    s->k = k;
    s->t = dino_trainer_new(be, &k->m, &c, k->batch, k->nv, k->res, 7, err);
    if (!s->t || dino_trainer_init(s->t, 11, err))
        return -1;
    for (int v = 0; v < k->nv; v++) {
        size_t n = (size_t)k->batch * k->m.in_chans * k->res[v] * k->res[v];
        if (!(s->views[v] = be->alloc(be, n, err)) || be->upload(be, s->views[v], host[v], n, err))
            return -1;
    }
    return 0;
}

static void side_close(side *s)
{
    for (int v = 0; s->k && v < s->k->nv; v++)
        if (s->be)
            s->be->release(s->be, s->views[v]);
    dino_trainer_free(s->t);
}

static float *role_of(side *s, dino_role r)
{
    size_t n = dino_trainer_nfloats(s->t);
    float *h = malloc(n * sizeof(float));
    gd_err err;
    if (h && s->be->download(s->be, h, dino_trainer_buffer(s->t, r), n, &err)) {
        free(h);
        return NULL;
    }
    return h;
}

/* Whole-buffer relative L2 error, and the worst tensor's, each tensor's
 * error measured against its own norm plus 1e-2 of the average tensor
 * norm (a gradient that is rounding noise on both sides is not held to
 * relative precision). */
typedef struct grad_cmp {
    double whole, worst;
    char where[96];
} grad_cmp;

static grad_cmp compare_tensors(dino_trainer *t, const float *gpu, const float *cpu)
{
    grad_cmp c = {rel_err(gpu, cpu, dino_trainer_nfloats(t)), 0, ""};
    int np;
    const dino_param *tab = dino_trainer_params(t, &np);
    double total = 0;
    for (int i = 0; i < np; i++)
        for (size_t k = 0; k < tab[i].n; k++)
            total += (double)cpu[tab[i].off + k] * cpu[tab[i].off + k];
    double floor = 1e-2 * sqrt(total / np);
    for (int i = 0; i < np; i++) {
        double d = 0, s = 0;
        for (size_t k = 0; k < tab[i].n; k++) {
            double e = (double)gpu[tab[i].off + k] - cpu[tab[i].off + k];
            d += e * e;
            s += (double)cpu[tab[i].off + k] * cpu[tab[i].off + k];
        }
        double rel = sqrt(d) / (sqrt(s) + floor);
        if (!(rel <= c.worst)) /* NaN counts as worst */
            c.worst = rel, snprintf(c.where, sizeof c.where, "%s", tab[i].name);
    }
    return c;
}

static float **random_views(const step_case *k, unsigned seed)
{
    float **h = calloc(MAX_VIEWS, sizeof *h);
    rng r;
    rng_init(&r, seed, 2, 0, 0);
    for (int v = 0; v < k->nv; v++) {
        size_t n = (size_t)k->batch * k->m.in_chans * k->res[v] * k->res[v];
        h[v] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            h[v][i] = (float)rng_normal(&r);
    }
    return h;
}

static void free_views(float **h)
{
    for (int v = 0; v < MAX_VIEWS; v++)
        free(h[v]);
    free(h);
}

/* The same model, weights and random views on the CPU and on the GPU. */
static int sides_open(side s[2], const step_case *c, gpu_test *g, unsigned seed, gd_err *err)
{
    float **hviews = random_views(c, seed);
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++)
        if ((rc = side_open(&s[k], c, g->be[k], (const float *const *)hviews, err)))
            gd_err_prefix(err, "%s", g->be[k]->name);
    free_views(hviews);
    return rc;
}

/* Forward, backward and two steps of case sc in `precision`; tol for the
 * loss, the gradients and the moments. */
static void step_check(const step_case *sc, const char *precision, double tol)
{
    gpu_test g;
    if (!gpu_begin(&g, precision, 20))
        return;
    side s[2] = {{0}, {0}};
    gd_err err;
    CHECK_MSG(sides_open(s, sc, &g, 9, &err) == 0, "%s: %s", sc->name, err.msg);

    double loss[2];
    for (int k = 0; k < 2; k++)
        CHECK_MSG(dino_trainer_loss(s[k].t, s[k].views, 0, 0.04, true, &loss[k], &err) == 0,
                  "%s: %s", g.be[k]->name, err.msg);
    note_err("loss", fabs(loss[GPU] - loss[CPU]) / fabs(loss[CPU]));
    CHECK_MSG(fabs(loss[GPU] - loss[CPU]) <= tol * fabs(loss[CPU]), "loss %.9g, CPU %.9g",
              loss[GPU], loss[CPU]);
    float *gr[2] = {role_of(&s[CPU], DINO_GRAD), role_of(&s[GPU], DINO_GRAD)};
    CHECK(gr[0] && gr[1]);
    grad_cmp gc = compare_tensors(s[CPU].t, gr[GPU], gr[CPU]);
    free(gr[0]);
    free(gr[1]);
    note_err("gradients", gc.whole);
    note_err("worst tensor", gc.worst);
    CHECK_MSG(gc.whole <= tol, "gradients: relative L2 error %.3g", gc.whole);
    CHECK_MSG(gc.worst <= 10 * tol, "gradient of %s: relative L2 error %.3g", gc.where, gc.worst);

    double lr = 0;
    for (long it = 0; it < 2; it++) {
        dino_step_stats st[2];
        for (int k = 0; k < 2; k++)
            CHECK_MSG(dino_trainer_step(s[k].t, s[k].views, it, &st[k], &err) == 0, "%s: %s",
                      g.be[k]->name, err.msg);
        CHECK_MSG(fabs(st[GPU].loss - st[CPU].loss) <= tol * fabs(st[CPU].loss),
                  "step %ld: loss %.9g, CPU %.9g", it, st[GPU].loss, st[CPU].loss);
        CHECK_MSG(st[GPU].nclipped == st[CPU].nclipped, "step %ld: %d tensors clipped, CPU %d", it,
                  st[GPU].nclipped, st[CPU].nclipped);
        CHECK(sc != &SMALL || st[CPU].nclipped > 0);
        lr += st[CPU].lr;
    }
    static const dino_role roles[] = {DINO_ADAM_M, DINO_ADAM_V, DINO_TEACHER};
    static const char *names[] = {"adam_m", "adam_v", "teacher"};
    for (int r = 0; r < 3; r++) {
        float *h[2] = {role_of(&s[CPU], roles[r]), role_of(&s[GPU], roles[r])};
        CHECK(h[0] && h[1]);
        double e = rel_err(h[GPU], h[CPU], dino_trainer_nfloats(s[CPU].t));
        free(h[0]);
        free(h[1]);
        note_err(names[r], e);
        CHECK_MSG(e <= (r == 1 ? 2 * tol : tol), "%s: relative L2 error %.3g", names[r], e);
    }
    float *p[2] = {role_of(&s[CPU], DINO_STUDENT), role_of(&s[GPU], DINO_STUDENT)};
    CHECK(p[0] && p[1]);
    size_t n = dino_trainer_nfloats(s[CPU].t), worst = 0;
    double wd = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)p[GPU][i] - p[CPU][i]);
        if (!(d <= wd))
            wd = d, worst = i;
    }
    free(p[0]);
    free(p[1]);
    note_err("student max |diff| / lr", wd / lr);
    CHECK_MSG(wd <= 2 * lr + 1e-6, "student element %zu off by %.3g (2 lr = %.3g)", worst, wd,
              2 * lr);
    int K = sc->m.out_dim;
    float *c[2] = {malloc(K * sizeof(float)), malloc(K * sizeof(float))};
    for (int k = 0; k < 2; k++)
        CHECK_MSG(dino_trainer_get_center(s[k].t, c[k], &err) == 0, "%s", err.msg);
    double ce = rel_err(c[GPU], c[CPU], K);
    free(c[0]);
    free(c[1]);
    CHECK_MSG(ce <= tol, "center: relative L2 error %.3g", ce);
    for (int k = 0; k < 2; k++)
        side_close(&s[k]);
}

/* fp32: the reference; this one also runs under compute-sanitizer in
 * `make check-gpu` */
TEST(cuda_dino_one_step) { step_check(&SMALL, "fp32", TOL_FP32); }
TEST(cuda_dino_step_tf32) { step_check(&SMALL, "tf32", TOL_STEP_TF32); }
TEST(cuda_dino_step_bf16) { step_check(&SMALL, "bf16", TOL_STEP_BF16); }

/* The recipes' shapes (launch grids, the 65536-wide head and loss, 197 and
 * 226 tokens) in fp32 and in the default bf16.  Seconds on a GPU; on the
 * CUDA emulator, where the GEMMs are plain loops, many minutes, so there
 * only with GD_GPU_RECIPES=1. */
static bool env_is(const char *name, const char *want)
{
    const char *e = getenv(name);
    return e && !strcmp(e, want);
}

static void recipe_check(const char *precision, double tol)
{
    char dev[256] = "";
    gd_err err;
    int ndev = gd_cuda_device_count(&err);
    if (ndev > 0 && gd_cuda_describe(0, dev, sizeof dev, &err) == 0 && strstr(dev, "emulator") &&
        !env_is("GD_GPU_RECIPES", "1")) {
        test_skip("the recipes take many minutes on the CUDA emulator (GD_GPU_RECIPES=1 "
                  "runs them)");
        return;
    }
    for (int s2 = 0; s2 < 2 && !test_failed(); s2++) {
        step_case c = recipe(s2);
        step_check(&c, precision, tol);
        if (ndev <= 0)
            return; /* skipped by gpu_begin, once */
    }
}

TEST(cuda_dino_step_recipes_fp32) { recipe_check("fp32", TOL_FP32); }
TEST(cuda_dino_step_recipes_bf16) { recipe_check("bf16", TOL_STEP_BF16); }

TEST(cuda_parity_pytorch_three_dino_steps)
{
    gpu_test g;
    if (!gpu_begin(&g, "fp32", 21))
        return;
    parity_replay(g.be[GPU]);
}

/* embed's features: the backbone alone, student and teacher */
TEST(cuda_dino_features)
{
    gpu_test g;
    if (!gpu_begin(&g, "fp32", 22))
        return;
    side s[2] = {{0}, {0}};
    gd_err err;
    CHECK_MSG(sides_open(s, &SMALL, &g, 10, &err) == 0, "%s", err.msg);
    size_t n = (size_t)2 * SMALL.batch * SMALL.m.embed_dim;
    float *f[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    for (int k = 0; k < 2; k++)
        CHECK_MSG(dino_trainer_features(s[k].t, DINO_TEACHER, s[k].views, f[k], &err) == 0, "%s",
                  err.msg);
    double e = rel_err(f[GPU], f[CPU], n);
    free(f[0]);
    free(f[1]);
    for (int k = 0; k < 2; k++)
        side_close(&s[k]);
    note_err("features", e);
    CHECK_MSG(e <= TOL_FP32, "features: relative L2 error %.3g", e);
}

/* A batch message into the views (trainer.c): each view staged sample by
 * sample in the backend's host memory (page-locked on the GPU) and uploaded
 * once; the GPU's views are the CPU's, bit for bit, also after a second
 * batch has reused the stage. */
TEST(cuda_views_fill)
{
    gpu_test t;
    if (!gpu_begin(&t, "fp32", 32))
        return;
    const batch_shape shape = {.B = 3, .G = 2, .L = 3, .C = 4, .H = 32, .h = 16};
    views v[2];
    int ok = 1;
    gd_err err;
    SIDES(s) ok &= views_init(&v[s], BE(s), &shape, &err) == 0;
    CHECK_MSG(ok, "views_init: %s", err.msg);
    if (!ok)
        return;
    for (int round = 0; round < 2; round++) {
        msg *m = msg_new("batch");
        tensor *g = m ? msg_add_tensor(m, "global", DT_F4, 5, (int64_t[]){3, 2, 4, 32, 32}) : NULL;
        tensor *l = g ? msg_add_tensor(m, "local", round ? DT_F2 : DT_F4, 5,
                                       (int64_t[]){3, 3, 4, 16, 16})
                      : NULL;
        CHECK(l != NULL);
        if (!l)
            return;
        for (size_t i = 0; i < g->count; i++)
            ((float *)g->data)[i] = (float)rng_normal(&t.r);
        for (size_t i = 0; i < l->count; i++) {
            float x = (float)rng_normal(&t.r);
            if (round)
                ((uint16_t *)l->data)[i] = f32_to_f16(x);
            else
                ((float *)l->data)[i] = x;
        }
        SIDES(s) ok &= views_fill(&v[s], m, &err) == 0;
        CHECK_MSG(ok, "views_fill: %s", err.msg);
        msg_free(m);
        for (int k = 0; ok && k < v[0].nviews; k++) {
            size_t n = (size_t)shape.B * shape.C * v[0].res[k] * v[0].res[k];
            float *h[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
            SIDES(s) ok &= h[s] && BE(s)->download(BE(s), h[s], v[s].dev[k], n, &err) == 0;
            SIDES(s) ok &= BE(s)->sync(BE(s), &err) == 0;
            CHECK_MSG(ok && !memcmp(h[0], h[1], n * sizeof(float)),
                      "round %d: view %d differs between the backends", round, k);
            free(h[0]), free(h[1]);
        }
    }
    SIDES(s) views_free(&v[s]);
    gpu_end(&t);
}
