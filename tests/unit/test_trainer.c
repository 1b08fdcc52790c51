/* trainer.c and ema.c: the configuration survives checkpoint meta key by
 * key, checkpoints restore the whole state, ema on named tensors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ema.h"
#include "msg.h"
#include "ops.h"
#include "test.h"
#include "trainer.h"

TEST(trainer_config_roundtrips_through_meta)
{
    run_config a, b;
    run_config_defaults(&a);
    dino_model_preset(&a.model, "vit_tiny", 8, 6);
    snprintf(a.arch, sizeof a.arch, "vit_tiny");
    a.model.depth = 3, a.model.out_dim = 77, a.model.norm_last_layer = false;
    a.model.drop_path_rate = 0.25f;
    a.train.lr = 0.0123, a.train.epochs = 7, a.train.niter_per_epoch = 11;
    a.train.warmup_teacher_temp_epochs = 2, a.train.clip_grad = 0;
    a.batch_size = 5, a.world_size = 3, a.local_crops_number = 4, a.seed = 123456789012ULL;
    a.dataset_size = 170, a.local_crops_scale[1] = 0.3;
    a.train.batch_size_total = 15;
    value meta = value_map();
    gd_err err;
    CHECK(run_config_to_meta(&a, &meta, &err) == 0);
    CHECK_MSG(run_config_from_meta(&b, &meta, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(b.arch, "vit_tiny"));
    CHECK(memcmp(&a.model, &b.model, sizeof a.model) == 0);
    CHECK(memcmp(&a.train, &b.train, sizeof a.train) == 0);
    CHECK(b.batch_size == 5 && b.world_size == 3 && b.local_crops_number == 4);
    CHECK(b.seed == 123456789012ULL && b.dataset_size == 170);
    CHECK(b.local_crops_scale[1] == 0.3 && b.global_crops_scale[0] == 0.4);
    /* a missing key is an error naming it */
    value *cfg = (value *)value_get(&meta, "config");
    value_set_str(cfg, "epochs", "many");
    run_config_free(&b);
    CHECK(run_config_from_meta(&b, &meta, &err) == -1);
    CHECK_MSG(strstr(err.msg, "config/epochs"), "%s", err.msg);
    run_config_free(&b);
    value_free(&meta);
}

TEST(trainer_checkpoint_restores_every_role_and_the_adam_steps)
{
    run_config c;
    run_config_defaults(&c);
    dino_model_preset(&c.model, "vit_tiny", 8, 2);
    c.model.img_size = 16, c.model.depth = 1, c.model.embed_dim = 8, c.model.num_heads = 2;
    c.model.out_dim = 8, c.model.hidden_dim = 8, c.model.bottleneck_dim = 4;
    c.batch_size = 1, c.local_crops_number = 0, c.train.niter_per_epoch = 3;
    gd_backend *be = gd_backend_cpu();
    gd_err err;
    batch_shape s = {.B = 1, .G = 2, .C = 2, .H = 16};
    dino_trainer *t = run_trainer_new(be, &c, &s, &err), *u = run_trainer_new(be, &c, &s, &err);
    CHECK(t && u);
    CHECK(dino_trainer_init(t, 1, &err) == 0 && dino_trainer_init(u, 2, &err) == 0);
    size_t n = dino_trainer_nfloats(t);
    for (int r = 0; r < 4; r++) /* distinct values in every role */
        be->fill(be, dino_trainer_buffer(t, r), 0.5f + r, n);
    float center[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK(dino_trainer_set_center(t, center, &err) == 0);
    int np;
    const dino_param *tab = dino_trainer_params(t, &np);
    for (int i = 0; i < np; i++)
        dino_trainer_adam_steps(t)[i] = 10 + i;
    msg *m = checkpoint_build(t, &c, 42, &err);
    CHECK(m);
    CHECK(value_int(&m->meta, "step", -1) == 42 && value_int(&m->meta, "epoch", -1) == 14);
    CHECK_MSG(checkpoint_restore(u, m, &err) == 0, "%s", err.msg);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    for (int r = 0; r < 4; r++) {
        be->download(be, a, dino_trainer_buffer(t, r), n, &err);
        be->download(be, b, dino_trainer_buffer(u, r), n, &err);
        for (int i = 0; i < np; i++) /* the tensors, not the alignment padding */
            CHECK(memcmp(a + tab[i].off, b + tab[i].off, tab[i].n * sizeof *a) == 0);
        CHECK(a[tab[3].off] == 0.5f + r);
    }
    float got[8];
    CHECK(dino_trainer_get_center(u, got, &err) == 0 && memcmp(got, center, sizeof got) == 0);
    for (int i = 0; i < np; i++)
        CHECK(dino_trainer_adam_steps(u)[i] == 10 + i);
    /* without adam_steps the checkpoint is refused */
    value_set_int(&m->meta, "adam_steps", 3);
    CHECK(checkpoint_restore(u, m, &err) == -1 && strstr(err.msg, "adam_steps"));
    free(a), free(b);
    msg_free(m);
    dino_trainer_free(t), dino_trainer_free(u);
}

TEST(ema_on_named_tensors_matches_the_formula_and_checks_pairs)
{
    msg *t = msg_new("checkpoint"), *s = msg_new("checkpoint");
    float tv[3] = {1, -2, 4}, sv[3] = {3, 2, 0};
    msg_add_tensor_copy(t, "teacher/w", DT_F4, 1, (int64_t[]){3}, tv);
    msg_add_tensor_copy(t, "other", DT_F4, 1, (int64_t[]){3}, tv);
    msg_add_tensor_copy(s, "student/w", DT_F4, 1, (int64_t[]){3}, sv);
    gd_err err;
    size_t n;
    CHECK(ema_update_msgs(gd_backend_cpu(), t, "teacher/", s, "student/", 0.75f, &n, &err) == 0);
    const float *w = msg_get_tensor(t, "teacher/w")->data;
    CHECK(n == 1 && w[0] == 1.5f && w[1] == -1.0f && w[2] == 3.0f);
    CHECK(((const float *)msg_get_tensor(t, "other")->data)[0] == 1.0f);
    msg_add_tensor_copy(s, "student/extra", DT_F4, 1, (int64_t[]){3}, sv);
    CHECK(ema_update_msgs(gd_backend_cpu(), t, "teacher/", s, "student/", 0.5f, &n, &err) == -1);
    CHECK_MSG(strstr(err.msg, "student/extra"), "%s", err.msg);
    CHECK(w[0] == 1.5f); /* nothing changed */
    CHECK_NEAR(ema_cosine_momentum(0.996, 0, 100), 0.996, 1e-15);
    CHECK_NEAR(ema_cosine_momentum(0.9, 50, 100), 0.95, 1e-15);
    msg_free(t), msg_free(s);
}

/* A batch [B, V, C, r, r] with element i = i / 1000 (f4), or NaN at one
 * index. */
static msg *numbered_batch(int B, int G, int L, int C, int H, int h, long nan_at)
{
    msg *m = msg_new("batch");
    tensor *g = m ? msg_add_tensor(m, "global", DT_F4, 5, (int64_t[]){B, G, C, H, H}) : NULL;
    tensor *l = g && L ? msg_add_tensor(m, "local", DT_F4, 5, (int64_t[]){B, L, C, h, h}) : NULL;
    if (!g || (L && !l))
        return NULL;
    for (size_t i = 0; i < g->count; i++)
        ((float *)g->data)[i] = (long)i == nan_at ? NAN : (float)i / 1000;
    for (size_t i = 0; l && i < l->count; i++)
        ((float *)l->data)[i] = -(float)i / 1000;
    return m;
}

/* The views a staged batch uploads: sample b of view k of the message,
 * as [B, C, r, r] per view; the first non-finite element named; a shape
 * that differs from the views' refused; the buffer reused. */
TEST(trainer_staged_batch_into_views)
{
    gd_backend *be = gd_backend_cpu();
    const batch_shape s = {.B = 3, .G = 2, .L = 3, .C = 2, .H = 8, .h = 4};
    views v;
    gd_err err;
    CHECK(views_init(&v, be, &s, &err) == 0);
    msg *m = numbered_batch(3, 2, 3, 2, 8, 4, -1);
    staged_batch sb = {0};
    staged_batch_make(&sb, be, m);
    CHECK(sb.status == 0 && sb.shape_ok);
    CHECK(views_fill_staged(&v, &sb, &err) == 0);
    size_t gimg = 2 * 8 * 8, limg = 2 * 4 * 4;
    /* view 1, sample 2, element 5 of the global tensor [3, 2, C, 8, 8] */
    CHECK(v.dev[1][2 * gimg + 5] == (float)((2 * 2 + 1) * gimg + 5) / 1000);
    /* view 2 + 2 = the third local view, sample 1, element 7 */
    CHECK(v.dev[4][1 * limg + 7] == -(float)((1 * 3 + 2) * limg + 7) / 1000);
    float *keep = sb.buf;
    msg_free(m);

    m = numbered_batch(3, 2, 3, 2, 8, 4, 700);
    staged_batch_make(&sb, be, m);
    CHECK(sb.buf == keep); /* same size: the buffer is kept */
    CHECK(views_fill_staged(&v, &sb, &err) == -1);
    CHECK_MSG(strstr(err.msg, "tensor \"global\": element 700 is not finite") != NULL, "%s",
              err.msg);
    CHECK(views_fill(&v, m, &err) == -1 && strstr(err.msg, "element 700 is not finite"));
    msg_free(m);

    m = numbered_batch(2, 2, 3, 2, 8, 4, 5);
    staged_batch_make(&sb, be, m);
    CHECK(views_fill_staged(&v, &sb, &err) == -1);
    CHECK_MSG(strstr(err.msg, "batch of shape B=2") != NULL, "%s", err.msg); /* before the NaN */
    msg_free(m);

    m = msg_new("batch");
    staged_batch_make(&sb, be, m);
    CHECK(!sb.shape_ok && views_fill_staged(&v, &sb, &err) == -1);
    msg_free(m);
    staged_batch_free(&sb, be);
    views_free(&v);
}
