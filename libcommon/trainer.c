/* trainer.c: configuration, checkpoints, batches and metrics around the
 * DINO core.  See trainer.h. */
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "halfprec.h"
#include "multicrop.h"
#include "raster.h"

/* ---- configuration --------------------------------------------------------- */

void run_config_defaults(run_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "vit_small");
    dino_model_preset(&c->model, "vit_small", 16, 3);
    dino_train_defaults(&c->train);
    c->batch_size = 64;
    c->world_size = 1;
    c->global_crops_number = 2;
    c->local_crops_number = 8;
    c->global_crops_scale[0] = 0.4, c->global_crops_scale[1] = 1.0;
    c->local_crops_scale[0] = 0.05, c->local_crops_scale[1] = 0.4;
}

void run_config_free(run_config *c)
{
    free(c->mean);
    free(c->std);
    if (c->bands)
        for (int i = 0; i < c->nstats; i++)
            free(c->bands[i]);
    free(c->bands);
    c->mean = c->std = NULL;
    c->bands = NULL;
    c->nstats = 0;
}

/* The per-band arrays of n bands (mean, std, names). */
static int stats_alloc(run_config *c, int n, gd_err *err)
{
    c->mean = malloc(n * sizeof(double));
    c->std = malloc(n * sizeof(double));
    c->bands = calloc(n, sizeof(char *));
    if (!c->mean || !c->std || !c->bands)
        return gd_errf(err, "out of memory");
    c->nstats = n;
    return 0;
}

int run_config_set_stats(run_config *c, const msg *stats, gd_err *err)
{
    const tensor *mean = msg_require_tensor(stats, "mean", DT_F8, 1, err);
    const tensor *std = mean ? msg_require_tensor(stats, "std", DT_F8, 1, err) : NULL;
    if (!std)
        return -1;
    if (mean->count != std->count || mean->count == 0 || mean->count > 4096)
        return gd_errf(err, "stats: mean and std need the same number (1 to 4096) of bands");
    run_config_free(c);
    int n = (int)mean->count;
    if (stats_alloc(c, n, err) < 0)
        return -1;
    c->stats_scale = value_float(&stats->meta, "scale", 1.0);
    if (!(c->stats_scale > 0 && isfinite(c->stats_scale)))
        c->stats_scale = 1.0;
    memcpy(c->mean, mean->data, n * sizeof(double));
    memcpy(c->std, std->data, n * sizeof(double));
    const value *names = value_get(&stats->meta, "bands");
    for (int i = 0; i < n; i++) {
        char buf[32];
        const char *s = NULL;
        if (names && names->type == V_ARRAY && (size_t)i < names->u.c.n &&
            names->u.c.items[i].type == V_STR)
            s = names->u.c.items[i].u.s;
        else
            snprintf(buf, sizeof buf, "B%d", i + 1), s = buf;
        if (!(c->bands[i] = strdup(s)))
            return gd_errf(err, "out of memory");
        if (!(c->std[i] > 0) || !isfinite(c->mean[i]))
            return gd_errf(err, "stats: band %d: std %g, mean %g", i + 1, c->std[i], c->mean[i]);
    }
    return 0;
}

/* The scalar keys of the configuration: DINO's argument names. */
typedef enum { K_INT, K_DBL, K_FLT, K_BOOL, K_LONG, K_U64 } key_type;
typedef struct cfg_key {
    const char *name;
    key_type type;
    size_t off;
} cfg_key;

#define M(f) offsetof(run_config, model.f)
#define T(f) offsetof(run_config, train.f)
#define R(f) offsetof(run_config, f)
static const cfg_key keys[] = {
    {"patch_size", K_INT, M(patch)},
    {"img_size", K_INT, M(img_size)},
    {"in_chans", K_INT, M(in_chans)},
    {"embed_dim", K_INT, M(embed_dim)},
    {"depth", K_INT, M(depth)},
    {"num_heads", K_INT, M(num_heads)},
    {"mlp_ratio", K_INT, M(mlp_ratio)},
    {"ln_eps", K_FLT, M(ln_eps)},
    {"drop_path_rate", K_FLT, M(drop_path_rate)},
    {"out_dim", K_INT, M(out_dim)},
    {"hidden_dim", K_INT, M(hidden_dim)},
    {"bottleneck_dim", K_INT, M(bottleneck_dim)},
    {"norm_last_layer", K_BOOL, M(norm_last_layer)},
    {"batch_size_per_gpu", K_INT, R(batch_size)},
    {"world_size", K_INT, R(world_size)},
    {"epochs", K_INT, T(epochs)},
    {"iters_per_epoch", K_INT, T(niter_per_epoch)},
    {"dataset_size", K_LONG, R(dataset_size)},
    {"warmup_epochs", K_INT, T(warmup_epochs)},
    {"lr", K_DBL, T(lr)},
    {"min_lr", K_DBL, T(min_lr)},
    {"weight_decay", K_DBL, T(weight_decay)},
    {"weight_decay_end", K_DBL, T(weight_decay_end)},
    {"momentum_teacher", K_DBL, T(momentum_teacher)},
    {"warmup_teacher_temp", K_DBL, T(warmup_teacher_temp)},
    {"teacher_temp", K_DBL, T(teacher_temp)},
    {"warmup_teacher_temp_epochs", K_INT, T(warmup_teacher_temp_epochs)},
    {"student_temp", K_DBL, T(student_temp)},
    {"center_momentum", K_DBL, T(center_momentum)},
    {"clip_grad", K_DBL, T(clip_grad)},
    {"freeze_last_layer", K_INT, T(freeze_last_layer)},
    {"beta1", K_DBL, T(beta1)},
    {"beta2", K_DBL, T(beta2)},
    {"adam_eps", K_DBL, T(adam_eps)},
    {"global_crops_number", K_INT, R(global_crops_number)},
    {"local_crops_number", K_INT, R(local_crops_number)},
    {"seed", K_U64, R(seed)},
};
#undef M
#undef T
#undef R
#define NKEYS (sizeof keys / sizeof keys[0])

int run_config_to_meta(const run_config *c, value *meta, gd_err *err)
{
    value *cfg = value_set_map(meta, "config");
    if (!cfg || !value_set_str(cfg, "arch", c->arch))
        return gd_errf(err, "out of memory");
    bool ok = true;
    for (size_t i = 0; i < NKEYS; i++) {
        const char *p = (const char *)c + keys[i].off;
        switch (keys[i].type) {
        case K_INT: ok = ok && value_set_int(cfg, keys[i].name, *(const int *)p); break;
        case K_LONG: ok = ok && value_set_int(cfg, keys[i].name, *(const long *)p); break;
        case K_U64: ok = ok && value_set_int(cfg, keys[i].name, (int64_t)*(const uint64_t *)p); break;
        case K_DBL: ok = ok && value_set_float(cfg, keys[i].name, *(const double *)p); break;
        case K_FLT: ok = ok && value_set_float(cfg, keys[i].name, *(const float *)p); break;
        case K_BOOL: ok = ok && value_set_bool(cfg, keys[i].name, *(const bool *)p); break;
        }
    }
    ok = ok && value_set_floats(cfg, "global_crops_scale", c->global_crops_scale, 2) &&
         value_set_floats(cfg, "local_crops_scale", c->local_crops_scale, 2);
    /* optional: absent until known, as in checkpoints made before them */
    if (c->global_crops_size)
        ok = ok && value_set_int(cfg, "global_crops_size", c->global_crops_size);
    if (c->local_crops_size)
        ok = ok && value_set_int(cfg, "local_crops_size", c->local_crops_size);
    if (ok && c->nstats) {
        value *st = value_set_map(meta, "stats");
        ok = st && value_set_strs(st, "bands", (const char *const *)c->bands, c->nstats) &&
             value_set_floats(st, "mean", c->mean, c->nstats) &&
             value_set_floats(st, "std", c->std, c->nstats) &&
             value_set_float(st, "scale", c->stats_scale);
    }
    return ok ? 0 : gd_errf(err, "out of memory");
}

static int get_pair(const value *cfg, const char *key, double out[2], gd_err *err)
{
    const value *a = value_get(cfg, key);
    if (!a || a->type != V_ARRAY || a->u.c.n != 2)
        return gd_errf(err, "meta config/%s: missing or not 2 numbers", key);
    for (int k = 0; k < 2; k++) {
        const value *x = &a->u.c.items[k];
        if (x->type == V_FLOAT)
            out[k] = x->u.f;
        else if (x->type == V_INT)
            out[k] = (double)x->u.i;
        else
            return gd_errf(err, "meta config/%s: not a number", key);
    }
    return 0;
}

/* An optional crop size: absent is 0 (the first batch fixes it). */
static int get_crop_size(const run_config *c, const value *cfg, const char *key, int *out,
                         gd_err *err)
{
    const value *v = value_get(cfg, key);
    *out = 0;
    if (!v)
        return 0;
    if (v->type != V_INT || v->u.i < 1 || v->u.i > (1 << 20))
        return gd_errf(err, "meta config/%s: not a positive integer", key);
    *out = (int)v->u.i;
    if (crop_size_check(c, key[0] == 'g' ? "global" : "local", *out, err))
        return gd_err_prefix(err, "meta config/%s", key);
    return 0;
}

static int get_doubles(const value *st, const char *key, double *out, int n, gd_err *err)
{
    const value *a = value_get(st, key);
    if (!a || a->type != V_ARRAY || a->u.c.n != (size_t)n)
        return gd_errf(err, "meta stats/%s: missing or not %d numbers", key, n);
    for (int k = 0; k < n; k++) {
        const value *x = &a->u.c.items[k];
        if (x->type != V_FLOAT && x->type != V_INT)
            return gd_errf(err, "meta stats/%s: not a number", key);
        out[k] = x->type == V_FLOAT ? x->u.f : (double)x->u.i;
    }
    return 0;
}

int run_config_from_meta(run_config *c, const value *meta, gd_err *err)
{
    run_config_defaults(c);
    const value *cfg = value_get(meta, "config");
    if (!cfg || cfg->type != V_MAP)
        return gd_errf(err, "meta has no \"config\" map (not a dino-step checkpoint?)");
    const value *arch = value_get(cfg, "arch");
    if (!arch || arch->type != V_STR)
        return gd_errf(err, "meta config/arch: missing");
    snprintf(c->arch, sizeof c->arch, "%s", arch->u.s);
    for (size_t i = 0; i < NKEYS; i++) {
        const value *v = value_get(cfg, keys[i].name);
        char *p = (char *)c + keys[i].off;
        bool num = v && (v->type == V_INT || v->type == V_FLOAT);
        if (!v || (keys[i].type == K_BOOL ? v->type != V_BOOL : !num) ||
            ((keys[i].type == K_INT || keys[i].type == K_LONG || keys[i].type == K_U64) &&
             v->type != V_INT))
            return gd_errf(err, "meta config/%s: missing or of the wrong type", keys[i].name);
        double f = v->type == V_FLOAT ? v->u.f : (double)v->u.i;
        switch (keys[i].type) {
        case K_INT:
            if (v->u.i < -(1LL << 30) || v->u.i > (1LL << 30))
                return gd_errf(err, "meta config/%s: %lld is out of range", keys[i].name,
                               (long long)v->u.i);
            *(int *)p = (int)v->u.i;
            break;
        case K_LONG: *(long *)p = (long)v->u.i; break;
        case K_U64: *(uint64_t *)p = (uint64_t)v->u.i; break;
        case K_DBL: *(double *)p = f; break;
        case K_FLT: *(float *)p = (float)f; break;
        case K_BOOL: *(bool *)p = v->u.b; break;
        }
    }
    if (get_pair(cfg, "global_crops_scale", c->global_crops_scale, err) ||
        get_pair(cfg, "local_crops_scale", c->local_crops_scale, err))
        return -1;
    c->train.batch_size_total = c->batch_size * c->world_size;
    if (c->batch_size < 1 || c->world_size < 1 || c->train.epochs < 1 ||
        c->train.niter_per_epoch < 1 || c->global_crops_number != 2 || c->local_crops_number < 0 ||
        c->local_crops_number > 30)
        return gd_errf(err, "meta config: batch size, world size, epochs, iters_per_epoch or crop "
                            "numbers out of range");
    if (dino_model_check(&c->model, err))
        return gd_err_prefix(err, "meta config");
    if (get_crop_size(c, cfg, "global_crops_size", &c->global_crops_size, err) ||
        get_crop_size(c, cfg, "local_crops_size", &c->local_crops_size, err))
        return -1;
    const value *st = value_get(meta, "stats");
    if (st) {
        const value *b = value_get(st, "bands");
        if (!b || b->type != V_ARRAY || b->u.c.n == 0 || b->u.c.n > 4096)
            return gd_errf(err, "meta stats/bands: missing or empty");
        int n = (int)b->u.c.n;
        if (stats_alloc(c, n, err) < 0)
            return -1;
        for (int i = 0; i < n; i++)
            if (!(c->bands[i] = strdup(b->u.c.items[i].type == V_STR ? b->u.c.items[i].u.s : "?")))
                return gd_errf(err, "out of memory");
        if (get_doubles(st, "mean", c->mean, n, err) || get_doubles(st, "std", c->std, n, err))
            return -1;
        c->stats_scale = value_float(st, "scale", 1.0);
        if (!(c->stats_scale > 0 && isfinite(c->stats_scale)))
            return gd_errf(err, "meta stats/scale: %g is not a positive number", c->stats_scale);
        for (int i = 0; i < n; i++)
            if (!(c->std[i] > 0) || !isfinite(c->mean[i]))
                return gd_errf(err, "meta stats: band %d: std %g, mean %g", i + 1, c->std[i],
                               c->mean[i]);
    }
    return 0;
}

void run_config_print(const run_config *c, FILE *f)
{
    fprintf(f, "arch: %s\n", c->arch);
    for (size_t i = 0; i < NKEYS; i++) {
        const char *p = (const char *)c + keys[i].off;
        fprintf(f, "%s: ", keys[i].name);
        switch (keys[i].type) {
        case K_INT: fprintf(f, "%d\n", *(const int *)p); break;
        case K_LONG: fprintf(f, "%ld\n", *(const long *)p); break;
        case K_U64: fprintf(f, "%llu\n", (unsigned long long)*(const uint64_t *)p); break;
        case K_DBL: fprintf(f, "%.17g\n", *(const double *)p); break;
        case K_FLT: fprintf(f, "%.9g\n", *(const float *)p); break;
        case K_BOOL: fprintf(f, "%s\n", *(const bool *)p ? "true" : "false"); break;
        }
    }
    fprintf(f, "global_crops_scale: %g %g\nlocal_crops_scale: %g %g\n", c->global_crops_scale[0],
            c->global_crops_scale[1], c->local_crops_scale[0], c->local_crops_scale[1]);
    fprintf(f, "global_crops_size: %d\nlocal_crops_size: %d\n", c->global_crops_size,
            c->local_crops_size);
}

/* ---- batches --------------------------------------------------------------- */

static bool is_float(dtype t) { return t == DT_F4 || t == DT_F8 || t == DT_F2 || t == DT_BF16; }

int batch_shape_of(const msg *m, batch_shape *s, gd_err *err)
{
    if (strcmp(m->kind, "batch") != 0)
        return gd_errf(err, "a \"%s\" message where a \"batch\" was expected", m->kind);
    const tensor *g = msg_get_tensor(m, "global"), *l = msg_get_tensor(m, "local");
    if (!g || g->ndim != 5 || !is_float(g->dtype))
        return gd_errf(err, "batch: needs a float tensor \"global\" [B, G, C, H, W]");
    if (l && (l->ndim != 5 || !is_float(l->dtype)))
        return gd_errf(err, "batch: tensor \"local\" must be a float tensor [B, L, C, h, w]");
    for (int d = 0; d < 5; d++)
        if (g->shape[d] < 1 || g->shape[d] > (1 << 20) || (l && l->shape[d] > (1 << 20)))
            return gd_errf(err, "batch: a dimension is out of range");
    if (g->shape[3] != g->shape[4] || (l && l->shape[3] != l->shape[4]))
        return gd_errf(err, "batch: crops must be square");
    if (l && l->shape[1] > 0 && (l->shape[0] != g->shape[0] || l->shape[2] != g->shape[2]))
        return gd_errf(err, "batch: \"global\" and \"local\" differ in batch size or bands");
    *s = (batch_shape){.B = (int)g->shape[0], .G = (int)g->shape[1], .C = (int)g->shape[2],
                       .H = (int)g->shape[3], .L = l ? (int)l->shape[1] : 0,
                       .h = l ? (int)l->shape[3] : 0};
    if (s->L == 0)
        s->h = 0;
    return 0;
}

int batch_check(const run_config *c, const batch_shape *s, gd_err *err)
{
    if (s->B != c->batch_size)
        return gd_errf(err, "batch of %d samples, the run's batch_size_per_gpu is %d "
                            "(multicrop --batch-size %d --drop-last)",
                       s->B, c->batch_size, c->batch_size);
    if (s->G != c->global_crops_number || s->L != c->local_crops_number)
        return gd_errf(err, "batch with %d global and %d local crops, the run has %d and %d", s->G,
                       s->L, c->global_crops_number, c->local_crops_number);
    if (s->C != c->model.in_chans)
        return gd_errf(err, "batch with %d bands, the model has in_chans %d", s->C,
                       c->model.in_chans);
    if (c->global_crops_size && s->H != c->global_crops_size)
        return gd_errf(err, "global crops of %d px, the run's global_crops_size is %d", s->H,
                       c->global_crops_size);
    if (s->L && c->local_crops_size && s->h != c->local_crops_size)
        return gd_errf(err, "local crops of %d px, the run's local_crops_size is %d", s->h,
                       c->local_crops_size);
    if (crop_size_check(c, "global", s->H, err) || (s->L && crop_size_check(c, "local", s->h, err)))
        return gd_err_prefix(err, "batch");
    return 0;
}

int crop_size_check(const run_config *c, const char *what, int size, gd_err *err)
{
    /* activations grow with the fourth power of the crop size: a sane
     * bound before a batch from an untrusted client sizes the trainer */
    if (size > 4 * c->model.img_size)
        return gd_errf(err, "%s crop size %d: more than 4 times the model's img_size %d", what,
                       size, c->model.img_size);
    if (size % c->model.patch)
        return gd_errf(err, "%s crop size %d is not a multiple of the patch size %d", what, size,
                       c->model.patch);
    return 0;
}

void run_config_fix_sizes(run_config *c, const batch_shape *s)
{
    if (!c->global_crops_size)
        c->global_crops_size = s->H;
    if (!c->local_crops_size && s->L)
        c->local_crops_size = s->h;
}

/* Where each view lies in a staged buffer: the views back to back, each
 * [B, C, res, res]; the total in floats. */
static size_t view_layout(const batch_shape *s, size_t *off)
{
    size_t at = 0;
    for (int k = 0; k < s->G + s->L; k++) {
        int res = k < s->G ? s->H : s->h;
        off[k] = at;
        at += (size_t)s->B * s->C * res * res;
    }
    return at;
}

int views_init(views *v, gd_backend *be, const batch_shape *s, gd_err *err)
{
    memset(v, 0, sizeof *v);
    v->be = be;
    v->s = *s;
    v->nviews = s->G + s->L;
    if (v->nviews > 32)
        return gd_errf(err, "batch: %d views, at most 32", v->nviews);
    size_t off[32], total = view_layout(s, off);
    for (int i = 0; i < v->nviews; i++) {
        v->res[i] = i < s->G ? s->H : s->h;
        size_t end = i + 1 < v->nviews ? off[i + 1] : total;
        if (!(v->dev[i] = be->alloc(be, end - off[i], err)))
            return -1;
    }
    return 0;
}

/* The nv views of a [B, nv, C, res, res] tensor, sample by sample, into
 * base + off[k] ([B, C, res, res] each), in parallel (on a GPU this host
 * work is what a step would wait for).  The error names the first
 * non-finite element, as a sequential scan would. */
static int convert_views(float *base, const size_t *off, const tensor *t, const batch_shape *s,
                         int nv, int res, gd_err *err)
{
    size_t img = (size_t)s->C * res * res, bad = SIZE_MAX;
    int B = s->B;
#pragma omp parallel for collapse(2) reduction(min : bad) if ((size_t)B * nv * img > 65536)
    for (int b = 0; b < B; b++)
        for (int k = 0; k < nv; k++) {
            size_t at = ((size_t)b * nv + k) * img;
            float *dst = base + off[k] + (size_t)b * img;
            /* cannot fail: batch_shape_of checked the dtype and the extent */
            (void)tensor_range_to_f32(t, at, img, dst);
            for (size_t i = 0; i < img; i++)
                if (!isfinite(dst[i])) {
                    bad = at + i < bad ? at + i : bad;
                    break;
                }
        }
    if (bad != SIZE_MAX)
        return gd_errf(err, "batch: tensor \"%s\": element %zu is not finite", t->name, bad);
    return 0;
}

void staged_batch_make(staged_batch *sb, gd_backend *be, const msg *batch)
{
    sb->status = -1;
    sb->shape_ok = batch_shape_of(batch, &sb->s, &sb->err) == 0;
    if (!sb->shape_ok)
        return;
    const batch_shape *s = &sb->s;
    if (s->G + s->L > 32) {
        gd_errf(&sb->err, "batch: %d views, at most 32", s->G + s->L);
        return;
    }
    size_t off[32], n = view_layout(s, off);
    if (n > sb->cap) {
        be->host_free(be, sb->buf);
        sb->cap = 0;
        if (!(sb->buf = be->host_alloc(be, n, &sb->err)))
            return;
        sb->cap = n;
    }
    if (convert_views(sb->buf, off, msg_get_tensor(batch, "global"), s, s->G, s->H, &sb->err))
        return;
    if (s->L && convert_views(sb->buf, off + s->G, msg_get_tensor(batch, "local"), s, s->L, s->h,
                              &sb->err))
        return;
    sb->status = 0;
}

void staged_batch_free(staged_batch *sb, gd_backend *be)
{
    be->host_free(be, sb->buf);
    memset(sb, 0, sizeof *sb);
}

static int staged_error(const staged_batch *sb, gd_err *err)
{
    if (err)
        *err = sb->err;
    return -1;
}

int views_fill_staged(views *v, const staged_batch *sb, gd_err *err)
{
    if (!sb->shape_ok)
        return staged_error(sb, err);
    const batch_shape *s = &sb->s;
    if (memcmp(s, &v->s, sizeof *s) != 0)
        return gd_errf(err, "batch of shape B=%d G=%d L=%d C=%d H=%d h=%d, the first batch was "
                            "B=%d G=%d L=%d C=%d H=%d h=%d",
                       s->B, s->G, s->L, s->C, s->H, s->h, v->s.B, v->s.G, v->s.L, v->s.C, v->s.H,
                       v->s.h);
    if (sb->status)
        return staged_error(sb, err);
    size_t off[32], total = view_layout(s, off);
    for (int k = 0; k < v->nviews; k++) {
        size_t end = k + 1 < v->nviews ? off[k + 1] : total;
        if (v->be->upload(v->be, v->dev[k], sb->buf + off[k], end - off[k], err))
            return -1;
    }
    /* the staged buffer may be reused once this returns */
    return v->be->sync(v->be, err);
}

int views_fill(views *v, const msg *batch, gd_err *err)
{
    staged_batch_make(&v->own, v->be, batch);
    return views_fill_staged(v, &v->own, err);
}

void views_free(views *v)
{
    for (int i = 0; i < v->nviews; i++)
        if (v->be && v->dev[i])
            v->be->release(v->be, v->dev[i]);
    if (v->be)
        staged_batch_free(&v->own, v->be);
    memset(v, 0, sizeof *v);
}

dino_trainer *run_trainer_new(gd_backend *be, const run_config *c, const batch_shape *s,
                              gd_err *err)
{
    int res[32];
    int nv = s->G + s->L;
    if (nv > 32)
        return gd_errf(err, "%d views, at most 32", nv), NULL;
    for (int i = 0; i < nv; i++)
        res[i] = i < s->G ? s->H : s->h;
    return dino_trainer_new(be, &c->model, &c->train, s->B, nv, res, c->seed, err);
}

/* ---- checkpoints ------------------------------------------------------------ */

msg *checkpoint_build(dino_trainer *t, const run_config *c, long step, gd_err *err)
{
    msg *m = msg_new("checkpoint");
    if (!m)
        return gd_errf(err, "out of memory"), NULL;
    int np;
    dino_trainer_params(t, &np);
    const int *as = dino_trainer_adam_steps(t);
    value *meta = &m->meta;
    value steps = value_array();
    bool ok = value_set_str(meta, "tool", "dino-step") &&
              value_set_str(meta, "version", GEODINO_VERSION) && value_set_int(meta, "step", step) &&
              value_set_int(meta, "epoch", step / c->train.niter_per_epoch);
    for (int i = 0; ok && i < np; i++)
        ok = value_push(&steps, (value){.type = V_INT, .u.i = as[i]}) != NULL;
    ok = ok && value_set(meta, "adam_steps", steps);
    value *rngm = ok ? value_set_map(meta, "rng") : NULL;
    ok = ok && rngm && value_set_str(rngm, "algorithm", "xoshiro256** streams (seed, 0xd409 + step, ...)") &&
         value_set_int(rngm, "seed", (int64_t)c->seed) && value_set_int(rngm, "drop_path_stream", step);
    if (!ok) {
        msg_free(m);
        return gd_errf(err, "out of memory"), NULL;
    }
    if (run_config_to_meta(c, meta, err))
        goto fail;
    static const dino_role roles[] = {DINO_STUDENT, DINO_TEACHER, DINO_ADAM_M, DINO_ADAM_V};
    for (int r = 0; r < 4; r++)
        if (dino_trainer_export(t, roles[r], m, dino_role_prefix(roles[r]), err))
            goto fail;
    tensor *ct = msg_add_tensor(m, "center", DT_F4, 1, (int64_t[]){c->model.out_dim});
    if (!ct) {
        gd_errf(err, "out of memory");
        goto fail;
    }
    if (dino_trainer_get_center(t, ct->data, err))
        goto fail;
    return m;
fail:
    msg_free(m);
    return NULL;
}

/* Removes the oldest <stem>-NNNNNN.mpt beyond keep. */
static void prune_copies(const char *path, int keep)
{
    char *dir = strdup(path), *base = NULL;
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    base = slash ? slash + 1 : dir;
    if (slash)
        *slash = 0, d = *dir ? dir : "/";
    size_t bl = strlen(base);
    if (bl > 4 && !strcmp(base + bl - 4, ".mpt"))
        bl -= 4;
    DIR *dh = opendir(d);
    if (!dh) {
        free(dir);
        return;
    }
    long *found = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dh))) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) || nm[bl] != '-')
            continue;
        char *end;
        long s = strtol(nm + bl + 1, &end, 10);
        if (end != nm + bl + 7 || strcmp(end, ".mpt"))
            continue;
        if (n == cap) {
            long *g = realloc(found, (cap = cap ? 2 * cap : 16) * sizeof *g);
            if (!g)
                break;
            found = g;
        }
        found[n++] = s;
    }
    closedir(dh);
    /* newest first */
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && found[j] > found[j - 1]; j--) {
            long x = found[j];
            found[j] = found[j - 1], found[j - 1] = x;
        }
    for (size_t i = (size_t)keep; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%.*s-%06ld.mpt", d, (int)bl, base, found[i]);
        unlink(p);
    }
    free(found);
    free(dir);
}

int checkpoint_save(dino_trainer *t, const run_config *c, long step, const char *path, int keep,
                    gd_err *err)
{
    msg *m = checkpoint_build(t, c, step, err);
    if (!m)
        return -1;
    int rc = msg_write_file(path, &m, 1, err);
    if (rc == 0 && keep > 0) {
        size_t pl = strlen(path), stem = pl > 4 && !strcmp(path + pl - 4, ".mpt") ? pl - 4 : pl;
        char copy[4096];
        snprintf(copy, sizeof copy, "%.*s-%06ld.mpt", (int)stem, path, step);
        rc = msg_write_file(copy, &m, 1, err);
        if (rc == 0)
            prune_copies(path, keep);
    }
    msg_free(m);
    return rc;
}

int checkpoint_restore_weights(dino_trainer *t, const msg *ck, gd_err *err)
{
    for (dino_role r = DINO_STUDENT; r <= DINO_TEACHER; r++)
        if (dino_trainer_load(t, r, ck, dino_role_prefix(r), err))
            return -1;
    return 0;
}

int checkpoint_restore(dino_trainer *t, const msg *ck, gd_err *err)
{
    if (checkpoint_restore_weights(t, ck, err))
        return -1;
    for (dino_role r = DINO_ADAM_M; r <= DINO_ADAM_V; r++)
        if (dino_trainer_load(t, r, ck, dino_role_prefix(r), err))
            return -1;
    int np;
    const dino_param *tab = dino_trainer_params(t, &np);
    (void)tab;
    const tensor *ct = msg_require_tensor(ck, "center", DT_F4, 1, err);
    if (!ct)
        return -1;
    size_t K = 0;
    for (int i = 0; i < np; i++)
        if (!strcmp(tab[i].name, "head/last_layer/weight_g"))
            K = (size_t)tab[i].shape[0];
    if (ct->count != K)
        return gd_errf(err, "tensor \"center\": %zu values, out_dim is %zu", ct->count, K);
    if (dino_trainer_set_center(t, ct->data, err))
        return -1;
    const value *as = value_get(&ck->meta, "adam_steps");
    if (!as || as->type != V_ARRAY || as->u.c.n != (size_t)np)
        return gd_errf(err, "meta adam_steps: missing or not %d integers", np);
    int *steps = dino_trainer_adam_steps(t);
    for (int i = 0; i < np; i++) {
        const value *x = &as->u.c.items[i];
        if (x->type != V_INT || x->u.i < 0 || x->u.i > (1LL << 30))
            return gd_errf(err, "meta adam_steps: item %d is not a step count", i);
        steps[i] = (int)x->u.i;
    }
    return 0;
}

/* ---- metrics ------------------------------------------------------------------ */

int step_metrics_compute(gd_backend *be, dino_trainer *t, const run_config *c, const float *center_before,
                         double temp, double loss, bool grads, step_metrics *mx, gd_err *err)
{
    memset(mx, 0, sizeof *mx);
    size_t K = (size_t)c->model.out_dim, rows = 2 * (size_t)c->batch_size;
    float *tout = malloc(rows * K * sizeof(float));
    double *mean = calloc(K, sizeof(double)), *q = malloc(K * sizeof(double));
    if (!tout || !mean || !q) {
        free(tout), free(mean), free(q);
        return gd_errf(err, "out of memory");
    }
    int rc = dino_trainer_outputs(t, NULL, tout, err);
    for (size_t r = 0; rc == 0 && r < rows; r++) {
        const float *x = tout + r * K;
        double mx_ = -INFINITY, z = 0, h = 0;
        for (size_t k = 0; k < K; k++)
            q[k] = ((double)x[k] - center_before[k]) / temp, mx_ = q[k] > mx_ ? q[k] : mx_;
        for (size_t k = 0; k < K; k++)
            z += (q[k] = exp(q[k] - mx_));
        for (size_t k = 0; k < K; k++) {
            double p = q[k] / z;
            mean[k] += p / rows;
            if (p > 0)
                h -= p * log(p);
        }
        mx->teacher_entropy += h / rows;
    }
    for (size_t k = 0; rc == 0 && k < K; k++)
        if (mean[k] > 0)
            mx->teacher_mean_entropy -= mean[k] * log(mean[k]);
    mx->kl = loss - mx->teacher_entropy;
    free(tout), free(mean), free(q);
    if (rc || !grads)
        return rc;
    int np;
    const dino_param *tab = dino_trainer_params(t, &np);
    double *norm = malloc(np * sizeof *norm), bb = 0, hd = 0, ll = 0;
    if (!norm)
        return gd_errf(err, "out of memory");
    dino_trainer_grad_norms(t, norm);
    for (int i = 0; i < np; i++) {
        double s = norm[i] * norm[i];
        if (tab[i].last_layer)
            ll += s;
        else if (!strncmp(tab[i].name, "head/", 5))
            hd += s;
        else
            bb += s;
    }
    free(norm);
    mx->grad_norm_backbone = sqrt(bb);
    mx->grad_norm_head = sqrt(hd);
    mx->grad_norm_last_layer = sqrt(ll);
    mx->grad_norm_total = sqrt(bb + hd + ll);
    return 0;
}

/* ---- embedding --------------------------------------------------------------- */

int embed_tile(const run_config *c, const char *path, int *size, float *out, gd_err *err)
{
    if (!c->nstats)
        return gd_errf(err, "the checkpoint holds no stats (init --stats); give --stats");
    raster r;
    if (raster_read(path, NULL, &r, err))
        return -1;
    int rc = 0, C = c->model.in_chans, p = c->model.patch;
    int s = (r.height < r.width ? r.height : r.width) / p * p;
    if (r.bands != C || r.bands != c->nstats)
        rc = gd_errf(err, "%s: %d bands, the model has %d", path, r.bands, C);
    else if (s < p)
        rc = gd_errf(err, "%s: %dx%d is smaller than a patch (%d)", path, r.width, r.height, p);
    else if (*size > 0 && s != *size)
        rc = gd_errf(err, "%s: gives %d px crops, the first tile %d (tiles must agree)", path, s,
                     *size);
    if (rc == 0 && out) {
        float mean[4096];
        for (int b = 0; b < C; b++)
            mean[b] = (float)c->mean[b];
        size_t npix = (size_t)r.height * r.width;
        mc_prepare(r.data, r.valid, C, npix, c->stats_scale, mean);
        int y0 = (r.height - s) / 2, x0 = (r.width - s) / 2;
        for (int b = 0; b < C; b++) {
            float m = mean[b], sd = (float)c->std[b];
            for (int y = 0; y < s; y++)
                for (int x = 0; x < s; x++)
                    out[((size_t)b * s + y) * s + x] =
                        (r.data[(size_t)b * npix + (size_t)(y0 + y) * r.width + x0 + x] - m) / sd;
        }
    }
    if (rc == 0)
        *size = s;
    raster_free(&r);
    return rc;
}
