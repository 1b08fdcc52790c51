/* The DINO model and training step on the CPU backend: the whole
 * model + head + loss gradient against finite differences on a tiny
 * configuration, the parameter table, schedules, the optimizer's groups,
 * the frozen last layer, the teacher EMA and a non-finite loss. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "dino.h"
#include "rng.h"
#include "test.h"

/* Views 16, 16 (native grid 4x4), 8, 8 (resized to 2x2) and 12 (3x3):
 * three crop groups, two of them through the bicubic position path. */
#define NV 5
static const int RES[NV] = {16, 16, 8, 8, 12};

static dino_model_cfg tiny_model(void)
{
    return (dino_model_cfg){.img_size = 16, .patch = 4, .in_chans = 3, .embed_dim = 12,
                            .depth = 2, .num_heads = 3, .mlp_ratio = 4, .ln_eps = 1e-6f,
                            .drop_path_rate = 0, .out_dim = 32, .hidden_dim = 16,
                            .bottleneck_dim = 8, .norm_last_layer = true};
}

static dino_train_cfg tiny_train(void)
{
    dino_train_cfg c;
    dino_train_defaults(&c);
    c.batch_size_total = 2;
    c.epochs = 4;
    c.niter_per_epoch = 2;
    c.warmup_epochs = 1;
    c.lr = 0.05;
    return c;
}

typedef struct fixture {
    gd_backend *be;
    dino_trainer *t;
    float *views[NV];
} fixture;

static int fixture_open(fixture *f, const dino_model_cfg *m, const dino_train_cfg *c, int B)
{
    gd_err err;
    f->be = gd_backend_cpu();
    f->t = dino_trainer_new(f->be, m, c, B, NV, RES, 7, &err);
    if (!f->t || dino_trainer_init(f->t, 11, &err)) {
        printf(" %s", err.msg);
        return -1;
    }
    rng r;
    rng_init(&r, 3, 1, 4, 1);
    for (int v = 0; v < NV; v++) {
        size_t n = (size_t)B * m->in_chans * RES[v] * RES[v];
        float *h = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            h[i] = (float)rng_normal(&r);
        f->views[v] = f->be->alloc(f->be, n, &err);
        f->be->upload(f->be, f->views[v], h, n, &err);
        free(h);
    }
    return 0;
}

static void fixture_close(fixture *f)
{
    for (int v = 0; v < NV; v++)
        f->be->release(f->be, f->views[v]);
    dino_trainer_free(f->t);
}

static float *download(fixture *f, dino_role r)
{
    size_t n = dino_trainer_nfloats(f->t);
    float *h = malloc(n * sizeof(float));
    f->be->download(f->be, h, dino_trainer_buffer(f->t, r), n, NULL);
    return h;
}

static void upload(fixture *f, dino_role r, const float *h)
{
    f->be->upload(f->be, dino_trainer_buffer(f->t, r), h, dino_trainer_nfloats(f->t), NULL);
}

/* For every parameter tensor: the directional derivative along a random
 * direction d (half the gradient direction, half noise, unit norm) from
 * central differences of the float32 loss, against g . d. */
static void gradient_check(const dino_model_cfg *m)
{
    fixture f;
    dino_train_cfg c = tiny_train();
    CHECK(fixture_open(&f, m, &c, 2) == 0);
    gd_err err;
    /* a nonzero center and a teacher that differs from the student */
    float center[32];
    for (int k = 0; k < 32; k++)
        center[k] = 0.05f * (float)sin(k);
    dino_trainer_set_center(f.t, center, &err);
    float *th = download(&f, DINO_TEACHER);
    size_t N = dino_trainer_nfloats(f.t);
    for (size_t i = 0; i < N; i++)
        th[i] *= 1.1f;
    upload(&f, DINO_TEACHER, th);
    free(th);

    double loss;
    CHECK(dino_trainer_loss(f.t, f.views, 3, 0.04, true, &loss, &err) == 0);
    float *g = download(&f, DINO_GRAD), *p = download(&f, DINO_STUDENT), *q = malloc(N * sizeof(float));
    int np;
    const dino_param *tab = dino_trainer_params(f.t, &np);
    rng r;
    rng_init(&r, 5, 0, 0, 0);
    int checked = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < np; i++) {
        const dino_param *t = &tab[i];
        if (!t->trainable)
            continue;
        double gn = 0, dn = 0, gd = 0;
        for (size_t k = 0; k < t->n; k++)
            gn += (double)g[t->off + k] * g[t->off + k];
        double *d = malloc(t->n * sizeof(double));
        for (size_t k = 0; k < t->n; k++) {
            d[k] = rng_normal(&r) / sqrt((double)t->n) + (gn > 0 ? g[t->off + k] / sqrt(gn) : 0);
            dn += d[k] * d[k];
        }
        for (size_t k = 0; k < t->n; k++)
            gd += g[t->off + k] * (d[k] /= sqrt(dn));
        /* a step that changes the loss by about 1e-2: large against the
         * float32 noise, small against the curvature (the head's L2
         * normalisation of a tiny vector makes some gradients huge) */
        double eps = fmin(1e-2, 1e-2 / (fabs(gd) + 1e-30)), lp, lm;
        memcpy(q, p, N * sizeof(float));
        for (size_t k = 0; k < t->n; k++)
            q[t->off + k] = (float)(p[t->off + k] + eps * d[k]);
        upload(&f, DINO_STUDENT, q);
        dino_trainer_loss(f.t, f.views, 3, 0.04, false, &lp, &err);
        for (size_t k = 0; k < t->n; k++)
            q[t->off + k] = (float)(p[t->off + k] - eps * d[k]);
        upload(&f, DINO_STUDENT, q);
        dino_trainer_loss(f.t, f.views, 3, 0.04, false, &lm, &err);
        free(d);
        double fd = (lp - lm) / (2 * eps);
        /* float32 loss noise is ~1e-6 absolute: 1e-4 absolute slack */
        double e = fabs(fd - gd) / (fabs(gd) + 1e-4);
        if (getenv("GD_VERBOSE")) printf("\n  %-40s fd %12.5e  g.d %12.5e", t->name, fd, gd);
        if (e > worst)
            worst = e, worst_name = t->name;
        checked++;
    }
    upload(&f, DINO_STUDENT, p);
    free(g), free(p), free(q);
    fixture_close(&f);
    CHECK(checked >= 30);
    CHECK_MSG(worst < 5e-3, "worst relative error %g in %s", worst, worst_name);
}

TEST(dino_whole_model_gradient_check)
{
    dino_model_cfg m = tiny_model();
    gradient_check(&m);
}

/* drop path masks are drawn from (seed, iteration): fixed within one
 * iteration, so finite differences see the same network; and a trainable
 * last-layer gain */
TEST(dino_gradient_check_with_drop_path_and_free_gain)
{
    dino_model_cfg m = tiny_model();
    m.drop_path_rate = 0.4f;
    m.norm_last_layer = false;
    gradient_check(&m);
}

TEST(dino_parameter_table_names_shapes_groups)
{
    fixture f;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    CHECK(fixture_open(&f, &m, &c, 2) == 0);
    int np;
    const dino_param *t = dino_trainer_params(f.t, &np);
    /* timm's 4 + 12 per block + 2, DINOHead's 6 + 2 */
    CHECK(np == 4 + 12 * 2 + 2 + 8);
    int found = 0;
    size_t total = 0;
    for (int i = 0; i < np; i++) {
        total += t[i].n;
        if (!strcmp(t[i].name, "backbone/blocks/1/attn/qkv/weight"))
            { found++; CHECK(t[i].ndim == 2 && t[i].shape[0] == 36 && t[i].shape[1] == 12 && t[i].decay); }
        if (!strcmp(t[i].name, "backbone/blocks/0/norm2/weight"))
            { found++; CHECK(t[i].ndim == 1 && !t[i].decay); }
        if (!strcmp(t[i].name, "backbone/pos_embed"))
            { found++; CHECK(t[i].ndim == 3 && t[i].shape[1] == 17 && t[i].decay); }
        if (!strcmp(t[i].name, "backbone/cls_token"))
            { found++; CHECK(t[i].decay); }
        if (!strcmp(t[i].name, "backbone/patch_embed/proj/weight"))
            { found++; CHECK(t[i].ndim == 4 && t[i].shape[1] == 3 && t[i].shape[3] == 4); }
        if (!strcmp(t[i].name, "head/mlp/4/bias"))
            { found++; CHECK(!t[i].decay && t[i].shape[0] == 8); }
        if (!strcmp(t[i].name, "head/last_layer/weight_g"))
            { found++; CHECK(!t[i].trainable && t[i].last_layer); }
        if (!strcmp(t[i].name, "head/last_layer/weight_v"))
            { found++; CHECK(t[i].trainable && t[i].last_layer && t[i].shape[0] == 32); }
        CHECK(i == 0 || t[i].off >= t[i - 1].off + t[i - 1].n);
    }
    CHECK(found == 8);
    /* 12*3*16 + 12 + 12 + 17*12 + 2 blocks + norm + head */
    size_t block = 2 * 12 + 36 * 12 + 36 + 12 * 12 + 12 + 2 * 12 + 48 * 12 + 48 + 12 * 48 + 12;
    size_t head = 12 * 16 + 16 + 16 * 16 + 16 + 16 * 8 + 8 + 32 + 32 * 8;
    CHECK(total == 12 + 17 * 12 + 12 * 48 + 12 + 2 * block + 24 + head);
    fixture_close(&f);
}

TEST(dino_schedules_follow_cosine_scheduler)
{
    /* np.linspace(0, 1, 3) then 1 + 0.5 * (base - final)(1 + cos(pi i / 5)) */
    CHECK_NEAR(dino_cosine(1, 0.1, 4, 2, 1, 0, 0), 0, 1e-15);
    CHECK_NEAR(dino_cosine(1, 0.1, 4, 2, 1, 0, 1), 1, 1e-15);
    CHECK_NEAR(dino_cosine(1, 0.1, 4, 2, 1, 0, 2), 1, 1e-15);
    CHECK_NEAR(dino_cosine(1, 0.1, 4, 2, 1, 0, 4), 0.1 + 0.45 * (1 + cos(M_PI * 2 / 6)), 1e-15);
    CHECK_NEAR(dino_cosine(1, 0.1, 4, 2, 1, 0, 7), 0.1 + 0.45 * (1 + cos(M_PI * 5 / 6)), 1e-15);
    dino_train_cfg c = tiny_train();
    c.warmup_teacher_temp_epochs = 3;
    c.warmup_teacher_temp = 0.04;
    c.teacher_temp = 0.07;
    CHECK_NEAR(dino_schedule(&c, 0).teacher_temp, 0.04, 1e-15);
    CHECK_NEAR(dino_schedule(&c, 3).teacher_temp, 0.055, 1e-15); /* epoch 1 */
    CHECK_NEAR(dino_schedule(&c, 5).teacher_temp, 0.07, 1e-15);
    CHECK_NEAR(dino_schedule(&c, 7).teacher_temp, 0.07, 1e-15);
    CHECK_NEAR(dino_schedule(&c, 2).lr, 0.05 * 2 / 256.0, 1e-15);
    CHECK_NEAR(dino_schedule(&c, 0).momentum, 0.996, 1e-15);
    CHECK_NEAR(dino_schedule(&c, 2).weight_decay, 0.04 + 0.5 * 0.36 * (1 - cos(M_PI * 2 / 8)), 1e-12);
}

/* One step in epoch 0 with freeze_last_layer 1: the last layer does not
 * move; everything else does; the teacher is the EMA of the new student;
 * a bias is not decayed (a zero-gradient bias stays); the loss is the
 * float64 cross-entropy of the outputs. */
TEST(dino_step_freeze_ema_groups)
{
    fixture f;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    c.warmup_epochs = 0;
    CHECK(fixture_open(&f, &m, &c, 2) == 0);
    gd_err err;
    int np;
    const dino_param *t = dino_trainer_params(f.t, &np);
    float *s0 = download(&f, DINO_STUDENT), *t0 = download(&f, DINO_TEACHER);
    dino_step_stats st;
    CHECK_MSG(dino_trainer_step(f.t, f.views, 0, &st, &err) == 0, "%s", err.msg);
    CHECK(st.last_layer_frozen && isfinite(st.loss) && st.loss > 0);
    float *s1 = download(&f, DINO_STUDENT), *t1 = download(&f, DINO_TEACHER);
    for (int i = 0; i < np; i++) {
        double moved = 0, ema = 0;
        for (size_t k = t[i].off; k < t[i].off + t[i].n; k++) {
            moved = fmax(moved, fabs(s1[k] - s0[k]));
            ema = fmax(ema, fabs(t1[k] - (t0[k] * (float)st.momentum + (1 - (float)st.momentum) * s1[k])));
        }
        CHECK_MSG(ema < 1e-7, "%s: teacher is not the EMA (%g)", t[i].name, ema);
        if (t[i].last_layer)
            CHECK_MSG(moved == 0, "%s moved while frozen", t[i].name);
        else
            CHECK_MSG(moved > 0.1 * st.lr, "%s did not move", t[i].name);
    }
    /* the loss from the downloaded outputs, and the center */
    int B = 2, K = 32;
    float *so = malloc(NV * B * K * sizeof(float)), *to = malloc(2 * B * K * sizeof(float)), cen[32];
    CHECK(dino_trainer_outputs(f.t, so, to, &err) == 0);
    CHECK(dino_trainer_get_center(f.t, cen, &err) == 0);
    double total = 0;
    int terms = 0;
    for (int iq = 0; iq < 2; iq++)
        for (int v = 0; v < NV; v++) {
            if (v == iq)
                continue;
            for (int b = 0; b < B; b++) {
                const float *sr = so + (v * B + b) * K, *tr = to + (iq * B + b) * K;
                double zs = 0, zt = 0, ce = 0, mt = -INFINITY, ms = -INFINITY;
                for (int k = 0; k < K; k++)
                    mt = fmax(mt, tr[k] / st.teacher_temp), ms = fmax(ms, sr[k] / 0.1);
                for (int k = 0; k < K; k++)
                    zt += exp(tr[k] / st.teacher_temp - mt), zs += exp(sr[k] / 0.1 - ms);
                for (int k = 0; k < K; k++)
                    ce -= exp(tr[k] / st.teacher_temp - mt) / zt * (sr[k] / 0.1 - ms - log(zs));
                total += ce / B;
            }
            terms++;
        }
    double want_center = 0;
    for (int r = 0; r < 2 * B; r++)
        want_center += to[r * K + 5] / (2.0 * B) * 0.1;
    float got_center = cen[5];
    free(s0), free(t0), free(s1), free(t1), free(so), free(to);
    fixture_close(&f);
    CHECK_NEAR(st.loss, total / terms, 1e-5);
    CHECK_NEAR(got_center, want_center, 1e-6);
}

TEST(dino_step_after_freeze_moves_last_layer_and_clips)
{
    fixture f;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    c.clip_grad = 1e-3; /* every tensor is clipped */
    CHECK(fixture_open(&f, &m, &c, 2) == 0);
    gd_err err;
    dino_step_stats st;
    float *s0 = download(&f, DINO_STUDENT);
    CHECK(dino_trainer_step(f.t, f.views, 2, &st, &err) == 0); /* epoch 1 */
    float *s1 = download(&f, DINO_STUDENT);
    int np;
    const dino_param *t = dino_trainer_params(f.t, &np);
    double moved = 0;
    for (int i = 0; i < np; i++)
        if (!strcmp(t[i].name, "head/last_layer/weight_v"))
            for (size_t k = t[i].off; k < t[i].off + t[i].n; k++)
                moved = fmax(moved, fabs(s1[k] - s0[k]));
    free(s0), free(s1);
    fixture_close(&f);
    CHECK(!st.last_layer_frozen);
    CHECK(moved > 0);
    CHECK(st.nclipped == np - 1); /* all but the fixed weight_g */
}

TEST(dino_nonfinite_loss_is_an_error_and_changes_nothing)
{
    fixture f;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    CHECK(fixture_open(&f, &m, &c, 2) == 0);
    gd_err err;
    size_t n = (size_t)2 * 3 * 16 * 16;
    f.be->fill(f.be, f.views[2], NAN, n / 4); /* a local crop: the student only */
    float *s0 = download(&f, DINO_STUDENT);
    dino_step_stats st;
    int rc = dino_trainer_step(f.t, f.views, 0, &st, &err);
    float *s1 = download(&f, DINO_STUDENT);
    int same = !memcmp(s0, s1, dino_trainer_nfloats(f.t) * sizeof(float));
    free(s0), free(s1);
    fixture_close(&f);
    CHECK(rc == -1);
    CHECK_STR_CONTAINS(err.msg, "loss is nan");
    CHECK(same);
}

TEST(dino_drop_path_touches_the_student_only)
{
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    fixture a, b;
    CHECK(fixture_open(&a, &m, &c, 2) == 0);
    m.drop_path_rate = 0.5f;
    CHECK(fixture_open(&b, &m, &c, 2) == 0);
    gd_err err;
    double la, lb;
    CHECK(dino_trainer_loss(a.t, a.views, 0, 0.04, false, &la, &err) == 0);
    CHECK(dino_trainer_loss(b.t, b.views, 0, 0.04, false, &lb, &err) == 0);
    int K = 32, n = NV * 2 * K;
    float *sa = malloc(n * sizeof(float)), *sb = malloc(n * sizeof(float));
    float ta[4 * 32], tb[4 * 32];
    dino_trainer_outputs(a.t, sa, ta, &err);
    dino_trainer_outputs(b.t, sb, tb, &err);
    int teacher_same = !memcmp(ta, tb, sizeof ta), student_same = !memcmp(sa, sb, n * sizeof(float));
    /* the same iteration draws the same masks */
    double lb2;
    CHECK(dino_trainer_loss(b.t, b.views, 0, 0.04, false, &lb2, &err) == 0);
    free(sa), free(sb);
    fixture_close(&a), fixture_close(&b);
    CHECK(teacher_same);
    CHECK(!student_same);
    CHECK(lb == lb2);
}

TEST(dino_rejects_bad_shapes)
{
    gd_err err;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    int res[3] = {16, 12, 8};
    CHECK(!dino_trainer_new(gd_backend_cpu(), &m, &c, 2, 3, res, 1, &err));
    CHECK_STR_CONTAINS(err.msg, "global crops differ");
    int res2[2] = {16, 10};
    CHECK(!dino_trainer_new(gd_backend_cpu(), &m, &c, 2, 2, res2, 1, &err));
    CHECK_STR_CONTAINS(err.msg, "not a multiple of patch");
    m.num_heads = 5;
    CHECK(!dino_trainer_new(gd_backend_cpu(), &m, &c, 2, 2, res, 1, &err));
    CHECK_STR_CONTAINS(err.msg, "divisible");
}

/* DINO's initialisation, by role: statistics of each tensor */
TEST(dino_init_follows_dino)
{
    fixture f;
    dino_model_cfg m = tiny_model();
    dino_train_cfg c = tiny_train();
    CHECK(fixture_open(&f, &m, &c, 2) == 0);
    float *s = download(&f, DINO_STUDENT), *t = download(&f, DINO_TEACHER);
    int same = !memcmp(s, t, dino_trainer_nfloats(f.t) * sizeof(float));
    int np;
    const dino_param *p = dino_trainer_params(f.t, &np);
    double fc1_sd = 0, patch_max = 0, v_max = 0, ones = 0, zeros = 0;
    size_t nfc1 = 0;
    for (int i = 0; i < np; i++) {
        const float *x = s + p[i].off;
        const char *nm = p[i].name;
        for (size_t k = 0; k < p[i].n; k++) {
            if (strstr(nm, "mlp/fc1/weight"))
                fc1_sd += (double)x[k] * x[k], nfc1++;
            if (strstr(nm, "patch_embed"))
                patch_max = fmax(patch_max, fabs(x[k]));
            if (strstr(nm, "weight_v"))
                v_max = fmax(v_max, fabs(x[k]));
            if (strstr(nm, "norm1/weight") || strstr(nm, "weight_g"))
                ones = fmax(ones, fabs(x[k] - 1));
            if (strstr(nm, "qkv/bias") || strstr(nm, "norm/bias"))
                zeros = fmax(zeros, fabs(x[k]));
        }
    }
    free(s), free(t);
    fixture_close(&f);
    CHECK(same);
    CHECK(fabs(sqrt(fc1_sd / nfc1) - 0.02) < 0.002); /* 1152 draws: 5 sigma */
    CHECK(patch_max <= 1 / sqrt(48.0) && patch_max > 0.8 / sqrt(48.0));
    CHECK(v_max <= 1 / sqrt(8.0) && v_max > 0.8 / sqrt(8.0));
    CHECK(ones == 0 && zeros == 0);
}

/* DESIGN.md: the same seed gives the same bytes whatever the number of
 * threads.  One step with 1 thread and with 3 must agree bit for bit
 * (fixed-order reductions, GEMM blocks that depend on shapes only). */
TEST(dino_step_is_bitwise_independent_of_thread_count)
{
    /* a head big enough that the backend splits its GEMMs over threads and
     * the loss and the gradient norms are parallel reductions */
    dino_model_cfg m = tiny_model();
    m.drop_path_rate = 0.2f;
    m.out_dim = 4096;
    m.bottleneck_dim = 64;
    dino_train_cfg c = tiny_train();
    int saved = omp_get_max_threads();
    float *out[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k ? 3 : 1);
        fixture f;
        CHECK(fixture_open(&f, &m, &c, 4) == 0);
        gd_err err;
        dino_step_stats st;
        CHECK(dino_trainer_step(f.t, f.views, 2, &st, &err) == 0);
        loss[k] = st.loss;
        out[k] = download(&f, DINO_STUDENT);
        fixture_close(&f);
    }
    omp_set_num_threads(saved);
    fixture f;
    CHECK(fixture_open(&f, &m, &c, 4) == 0);
    int same = !memcmp(out[0], out[1], dino_trainer_nfloats(f.t) * sizeof(float));
    fixture_close(&f);
    free(out[0]), free(out[1]);
    CHECK(same);
    CHECK(loss[0] == loss[1]);
}
