/* dino.c: ViT + DINO head + DINO loss + AdamW step on the backend seam.
 * Every numerical operation is a call through gd_backend; this file only
 * decides shapes, buffers and order.  See dino.h. */
#include "dino.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define MAX_VIEWS 32
#define MAX_DIMS 4

/* ---- configuration ------------------------------------------------------ */

int dino_model_preset(dino_model_cfg *c, const char *arch, int patch, int in_chans)
{
    static const struct {
        const char *name;
        int dim, heads;
    } archs[] = {{"vit_tiny", 192, 3}, {"vit_small", 384, 6}, {"vit_base", 768, 12}};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (!strcmp(arch, archs[i].name)) {
            *c = (dino_model_cfg){.img_size = 224, .patch = patch, .in_chans = in_chans,
                                  .embed_dim = archs[i].dim, .depth = 12,
                                  .num_heads = archs[i].heads, .mlp_ratio = 4, .ln_eps = 1e-6f,
                                  .drop_path_rate = 0.1f, .out_dim = 65536, .hidden_dim = 2048,
                                  .bottleneck_dim = 256, .norm_last_layer = true};
            return 0;
        }
    return -1;
}

int dino_model_check(const dino_model_cfg *c, gd_err *err)
{
    if (c->patch < 1 || c->img_size < c->patch || c->img_size % c->patch)
        return gd_errf(err, "img_size %d is not a multiple of patch %d", c->img_size, c->patch);
    if (c->in_chans < 1 || c->depth < 1 || c->embed_dim < 1 || c->num_heads < 1 ||
        c->mlp_ratio < 1 || c->out_dim < 1 || c->hidden_dim < 1 || c->bottleneck_dim < 1)
        return gd_errf(err, "model sizes must be positive");
    if (c->embed_dim % c->num_heads)
        return gd_errf(err, "embed_dim %d is not divisible by num_heads %d", c->embed_dim,
                       c->num_heads);
    if (!(c->drop_path_rate >= 0 && c->drop_path_rate < 1))
        return gd_errf(err, "drop_path_rate %g is outside [0, 1)", c->drop_path_rate);
    return 0;
}

void dino_train_defaults(dino_train_cfg *c)
{
    *c = (dino_train_cfg){.batch_size_total = 64, .epochs = 100, .niter_per_epoch = 1,
                          .warmup_epochs = 10, .lr = 0.0005, .min_lr = 1e-6,
                          .weight_decay = 0.04, .weight_decay_end = 0.4,
                          .momentum_teacher = 0.996, .warmup_teacher_temp = 0.04,
                          .teacher_temp = 0.04, .warmup_teacher_temp_epochs = 0,
                          .student_temp = 0.1, .center_momentum = 0.9, .clip_grad = 3.0,
                          .freeze_last_layer = 1, .beta1 = 0.9, .beta2 = 0.999, .adam_eps = 1e-8};
}

/* ---- schedules ------------------------------------------------------------ */

/* utils.cosine_scheduler: np.linspace warmup, then a half cosine over the
 * remaining iterations; iterations past the end keep the final value. */
double dino_cosine(double base, double final, int epochs, int niter, int warmup_epochs,
                   double start_warmup, long it)
{
    long warm = (long)warmup_epochs * niter, total = (long)epochs * niter;
    if (it < warm)
        return warm == 1 ? start_warmup : start_warmup + (base - start_warmup) * it / (warm - 1);
    long n = total - warm, i = it - warm;
    if (n <= 0)
        return final;
    if (i >= n)
        i = n - 1;
    return final + 0.5 * (base - final) * (1 + cos(M_PI * i / n));
}

dino_sched dino_schedule(const dino_train_cfg *c, long it)
{
    dino_sched s;
    double lr = c->lr * c->batch_size_total / 256.0;
    s.lr = dino_cosine(lr, c->min_lr, c->epochs, c->niter_per_epoch, c->warmup_epochs, 0, it);
    s.weight_decay = dino_cosine(c->weight_decay, c->weight_decay_end, c->epochs,
                                 c->niter_per_epoch, 0, 0, it);
    s.momentum = dino_cosine(c->momentum_teacher, 1, c->epochs, c->niter_per_epoch, 0, 0, it);
    long epoch = it / c->niter_per_epoch;
    int w = c->warmup_teacher_temp_epochs;
    if (epoch < w)
        s.teacher_temp = w == 1 ? c->warmup_teacher_temp
                                : c->warmup_teacher_temp + (c->teacher_temp - c->warmup_teacher_temp) *
                                                               epoch / (w - 1);
    else
        s.teacher_temp = c->teacher_temp;
    return s;
}

/* ---- parameters --------------------------------------------------------------- */

typedef struct lin_w {
    float *w, *b;
} lin_w;

typedef struct block_w {
    lin_w norm1, qkv, proj, norm2, fc1, fc2; /* norms use w, b too */
} block_w;

typedef struct dino_w {
    lin_w patch, norm, mlp[3];
    float *cls, *pos, *last_g, *last_v;
    block_w *blocks;
} dino_w;

/* One walk over the model both builds the table (bind == false) and binds
 * a dino_w to a role buffer (bind == true), so the two can never disagree
 * about order. */
typedef struct walk {
    dino_param *tab;
    int n;
    size_t total;
    bool bind;
    float *base;
    const dino_model_cfg *cfg;
} walk;

static void reg(walk *wk, float **slot, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void reg(walk *wk, float **slot, int ndim, const int64_t *shape, const char *fmt, ...)
{
    dino_param *p = &wk->tab[wk->n++];
    if (wk->bind) {
        *slot = wk->base + p->off;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->n = 1;
    for (int i = 0; i < ndim; i++)
        p->n *= (size_t)(p->shape[i] = shape[i]);
    p->off = wk->total;
    wk->total += (p->n + 15) / 16 * 16; /* 64-byte aligned tensors */
    size_t len = strlen(p->name);
    bool is_bias = len >= 5 && !strcmp(p->name + len - 5, "/bias");
    p->decay = !is_bias && ndim > 1;
    p->last_layer = strstr(p->name, "last_layer") != NULL;
    p->trainable = !(strstr(p->name, "last_layer/weight_g") && wk->cfg->norm_last_layer);
}

#define S(...) ((const int64_t[]){__VA_ARGS__})

static void reg_linear(walk *wk, lin_w *l, int out, int in, const char *name)
{
    reg(wk, &l->w, 2, S(out, in), "%s/weight", name);
    reg(wk, &l->b, 1, S(out), "%s/bias", name);
}

static void reg_norm(walk *wk, lin_w *l, int D, const char *name)
{
    reg(wk, &l->w, 1, S(D), "%s/weight", name);
    reg(wk, &l->b, 1, S(D), "%s/bias", name);
}

static void walk_model(walk *wk, dino_w *w)
{
    const dino_model_cfg *c = wk->cfg;
    int D = c->embed_dim, g = c->img_size / c->patch, F = c->mlp_ratio * D;
    reg(wk, &w->cls, 3, S(1, 1, D), "backbone/cls_token");
    reg(wk, &w->pos, 3, S(1, 1 + g * g, D), "backbone/pos_embed");
    reg(wk, &w->patch.w, 4, S(D, c->in_chans, c->patch, c->patch), "backbone/patch_embed/proj/weight");
    reg(wk, &w->patch.b, 1, S(D), "backbone/patch_embed/proj/bias");
    char name[64];
    for (int i = 0; i < c->depth; i++) {
        block_w *b = &w->blocks[i];
#define BLK(part) (snprintf(name, sizeof name, "backbone/blocks/%d/%s", i, part), name)
        reg_norm(wk, &b->norm1, D, BLK("norm1"));
        reg_linear(wk, &b->qkv, 3 * D, D, BLK("attn/qkv"));
        reg_linear(wk, &b->proj, D, D, BLK("attn/proj"));
        reg_norm(wk, &b->norm2, D, BLK("norm2"));
        reg_linear(wk, &b->fc1, F, D, BLK("mlp/fc1"));
        reg_linear(wk, &b->fc2, D, F, BLK("mlp/fc2"));
#undef BLK
    }
    reg_norm(wk, &w->norm, D, "backbone/norm");
    reg_linear(wk, &w->mlp[0], c->hidden_dim, D, "head/mlp/0");
    reg_linear(wk, &w->mlp[1], c->hidden_dim, c->hidden_dim, "head/mlp/2");
    reg_linear(wk, &w->mlp[2], c->bottleneck_dim, c->hidden_dim, "head/mlp/4");
    reg(wk, &w->last_g, 2, S(c->out_dim, 1), "head/last_layer/weight_g");
    reg(wk, &w->last_v, 2, S(c->out_dim, c->bottleneck_dim), "head/last_layer/weight_v");
}

/* ---- device memory ---------------------------------------------------------------- */

typedef struct pool {
    gd_backend *be;
    float **p;
    int n, cap;
    int failed;
    gd_err *err;
} pool;

static float *palloc(pool *pl, size_t n)
{
    if (pl->failed)
        return NULL;
    if (pl->n == pl->cap) {
        int cap = pl->cap ? 2 * pl->cap : 64;
        float **p = realloc(pl->p, cap * sizeof *p);
        if (!p) {
            pl->failed = gd_errf(pl->err, "out of memory");
            return NULL;
        }
        pl->p = p, pl->cap = cap;
    }
    float *x = pl->be->alloc(pl->be, n, pl->err);
    if (!x) {
        pl->failed = -1;
        return NULL;
    }
    return pl->p[pl->n++] = x;
}

static void pool_free(pool *pl)
{
    for (int i = 0; i < pl->n; i++)
        pl->be->release(pl->be, pl->p[i]);
    free(pl->p);
}

/* ---- activations ---------------------------------------------------------------------- */

typedef struct blk_acts {
    float *ln1, *ln1_m, *ln1_r, *qkv, *att, *attn, *proj, *xmid;
    float *ln2, *ln2_m, *ln2_r, *fc1, *act, *mlp, *xout;
    float *s1, *s2; /* host: per-sample drop-path scales */
} blk_acts;

/* Consecutive views of one size, through the backbone together. */
typedef struct grp {
    int first_view, nviews, res, gh, np, T, B; /* B = nviews * batch */
    bool interp;
    double scale; /* DINO's (gh + 0.1) / native grid */
    float *pos, *patches, *pemb, *x0, *cls, *out_m, *out_r;
    blk_acts *blk;
    /* backward (student only) */
    float *dres, *dtmp, *dh4, *dln, *dattn, *dqkv, *datt, *dpemb, *dpos, *dcls;
} grp;

typedef struct head_acts {
    int R;
    float *h1, *g1, *h2, *g2, *h3, *z, *zn, *W, *Wn, *out;
    float *dW, *dz, *dh3, *dg2, *dg1, *dfeat, *dout;
} head_acts;

struct dino_trainer {
    gd_backend *be;
    dino_model_cfg mc;
    dino_train_cfg tc;
    int B, nviews, res[MAX_VIEWS];
    uint64_t seed;
    dino_param *tab;
    int np;
    size_t total;
    float *buf[5];
    dino_w w[5];
    int *adam_step;
    size_t *offs, *lens; /* host copies for clip_per_tensor */
    gd_adam_tensor *adam; /* the tensors one optimizer step updates */
    double *norms;
    grp sg[MAX_VIEWS], tg[2];
    int nsg, ntg;
    head_acts sh, th;
    float *sfeat, *tfeat, *center, *q, *loss;
    pool pl;
    gd_comm *comm;  /* data-parallel ranks; NULL: one process */
    float *cmean;   /* [out_dim] the teacher's batch mean, reduced over ranks */
    size_t bucket;  /* floats per gradient bucket; 0: one all-reduce after backward */
    bool overlap;   /* this backward pass starts the buckets */
    size_t red_lo, red_hi; /* gradients final, their reduction not started yet */
    int comm_failed;
    gd_err comm_err;
};

static int make_groups(grp *g, int nviews, const int *res, int batch)
{
    int n = 0;
    for (int v = 0; v < nviews; v++) {
        if (n && g[n - 1].res == res[v]) {
            g[n - 1].nviews++;
            continue;
        }
        g[n++] = (grp){.first_view = v, .nviews = 1, .res = res[v]};
    }
    for (int i = 0; i < n; i++)
        g[i].B = g[i].nviews * batch;
    return n;
}

static void alloc_group(dino_trainer *t, grp *g, bool backward)
{
    const dino_model_cfg *c = &t->mc;
    pool *pl = &t->pl;
    int D = c->embed_dim, F = c->mlp_ratio * D, H = c->num_heads, gn = c->img_size / c->patch;
    int cpp = c->in_chans * c->patch * c->patch;
    g->gh = g->res / c->patch;
    g->np = g->gh * g->gh;
    g->T = g->np + 1;
    g->interp = g->np != gn * gn;
    g->scale = (g->gh + 0.1) / gn;
    size_t M = (size_t)g->B * g->T;
    g->pos = g->interp ? palloc(pl, (size_t)g->T * D) : NULL;
    g->patches = palloc(pl, (size_t)g->B * g->np * cpp);
    g->pemb = palloc(pl, (size_t)g->B * g->np * D);
    g->x0 = palloc(pl, M * D);
    g->cls = palloc(pl, (size_t)g->B * D);
    g->out_m = palloc(pl, g->B);
    g->out_r = palloc(pl, g->B);
    g->blk = calloc(c->depth, sizeof *g->blk);
    if (!g->blk) {
        pl->failed = gd_errf(pl->err, "out of memory");
        return;
    }
    for (int i = 0; i < c->depth; i++) {
        blk_acts *a = &g->blk[i];
        a->ln1 = palloc(pl, M * D), a->ln1_m = palloc(pl, M), a->ln1_r = palloc(pl, M);
        a->qkv = palloc(pl, M * 3 * D), a->att = palloc(pl, (size_t)g->B * H * g->T * g->T);
        a->attn = palloc(pl, M * D), a->proj = palloc(pl, M * D), a->xmid = palloc(pl, M * D);
        a->ln2 = palloc(pl, M * D), a->ln2_m = palloc(pl, M), a->ln2_r = palloc(pl, M);
        a->fc1 = palloc(pl, M * F), a->act = palloc(pl, M * F), a->mlp = palloc(pl, M * D);
        a->xout = palloc(pl, M * D);
        a->s1 = calloc(g->B, sizeof(float)), a->s2 = calloc(g->B, sizeof(float));
        if (!a->s1 || !a->s2)
            pl->failed = gd_errf(pl->err, "out of memory");
    }
    if (!backward)
        return;
    g->dres = palloc(pl, M * D), g->dtmp = palloc(pl, M * D), g->dh4 = palloc(pl, M * F);
    g->dln = palloc(pl, M * D), g->dattn = palloc(pl, M * D), g->dqkv = palloc(pl, M * 3 * D);
    g->datt = palloc(pl, (size_t)g->B * H * g->T * g->T);
    g->dpemb = palloc(pl, (size_t)g->B * g->np * D);
    g->dpos = g->interp ? palloc(pl, (size_t)g->T * D) : NULL;
    g->dcls = palloc(pl, (size_t)g->B * D);
}

static void free_group(grp *g, int depth)
{
    if (!g->blk)
        return;
    for (int i = 0; i < depth; i++)
        free(g->blk[i].s1), free(g->blk[i].s2);
    free(g->blk);
}

static void alloc_head(dino_trainer *t, head_acts *h, int R, bool backward)
{
    const dino_model_cfg *c = &t->mc;
    pool *pl = &t->pl;
    int hid = c->hidden_dim, bn = c->bottleneck_dim, K = c->out_dim;
    h->R = R;
    h->h1 = palloc(pl, (size_t)R * hid), h->g1 = palloc(pl, (size_t)R * hid);
    h->h2 = palloc(pl, (size_t)R * hid), h->g2 = palloc(pl, (size_t)R * hid);
    h->h3 = palloc(pl, (size_t)R * bn), h->z = palloc(pl, (size_t)R * bn), h->zn = palloc(pl, R);
    h->W = palloc(pl, (size_t)K * bn), h->Wn = palloc(pl, K), h->out = palloc(pl, (size_t)R * K);
    if (!backward)
        return;
    h->dW = palloc(pl, (size_t)K * bn), h->dz = palloc(pl, (size_t)R * bn);
    h->dh3 = palloc(pl, (size_t)R * bn), h->dg2 = palloc(pl, (size_t)R * hid);
    h->dg1 = palloc(pl, (size_t)R * hid), h->dfeat = palloc(pl, (size_t)R * c->embed_dim);
    h->dout = palloc(pl, (size_t)R * K);
}

/* ---- construction ------------------------------------------------------------------------ */

static int bind_all(dino_trainer *t)
{
    for (int r = 0; r < 5; r++) {
        t->w[r].blocks = calloc(t->mc.depth, sizeof(block_w));
        if (!t->w[r].blocks)
            return gd_errf(t->pl.err, "out of memory");
        walk wk = {.tab = t->tab, .bind = true, .base = t->buf[r], .cfg = &t->mc};
        walk_model(&wk, &t->w[r]);
    }
    return 0;
}

static int build_table(dino_trainer *t, gd_err *err)
{
    int cap = 16 + 12 * t->mc.depth;
    t->tab = calloc(cap, sizeof *t->tab);
    dino_w scratch = {.blocks = calloc(t->mc.depth, sizeof(block_w))};
    if (!t->tab || !scratch.blocks) {
        free(scratch.blocks);
        return gd_errf(err, "out of memory");
    }
    walk wk = {.tab = t->tab, .cfg = &t->mc};
    walk_model(&wk, &scratch);
    free(scratch.blocks);
    t->np = wk.n;
    t->total = wk.total;
    t->adam_step = calloc(t->np, sizeof(int));
    t->offs = calloc(t->np, sizeof(size_t));
    t->lens = calloc(t->np, sizeof(size_t));
    t->norms = calloc(t->np, sizeof(double));
    t->adam = calloc(t->np, sizeof *t->adam);
    if (!t->adam_step || !t->offs || !t->lens || !t->norms || !t->adam)
        return gd_errf(err, "out of memory");
    return 0;
}

static int check_views(const dino_model_cfg *m, int B, int nviews, const int *res, gd_err *err)
{
    if (B < 1 || nviews < 2 || nviews > MAX_VIEWS)
        return gd_errf(err, "need a batch >= 1 and 2 to %d views, got %d and %d", MAX_VIEWS, B,
                       nviews);
    for (int v = 0; v < nviews; v++)
        if (res[v] < m->patch || res[v] % m->patch)
            return gd_errf(err, "view %d: size %d is not a multiple of patch %d", v, res[v],
                           m->patch);
    if (res[0] != res[1])
        return gd_errf(err, "the two global crops differ in size (%d, %d)", res[0], res[1]);
    return 0;
}

dino_trainer *dino_trainer_new(gd_backend *be, const dino_model_cfg *m, const dino_train_cfg *tc,
                               int B, int nviews, const int *res, uint64_t seed, gd_err *err)
{
    if (dino_model_check(m, err) || check_views(m, B, nviews, res, err))
        return NULL;
    if (tc->niter_per_epoch < 1 || tc->epochs < 1)
        return gd_errf(err, "epochs and niter_per_epoch must be positive"), NULL;
    dino_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return gd_errf(err, "out of memory"), NULL;
    *t = (dino_trainer){.be = be, .mc = *m, .tc = *tc, .B = B, .nviews = nviews, .seed = seed};
    memcpy(t->res, res, nviews * sizeof(int));
    t->pl = (pool){.be = be, .err = err};
    if (build_table(t, err)) {
        dino_trainer_free(t);
        return NULL;
    }
    for (int r = 0; r < 5; r++)
        t->buf[r] = palloc(&t->pl, t->total);
    t->nsg = make_groups(t->sg, nviews, res, B);
    t->ntg = make_groups(t->tg, 2, res, B);
    for (int i = 0; i < t->nsg && !t->pl.failed; i++)
        alloc_group(t, &t->sg[i], true);
    for (int i = 0; i < t->ntg && !t->pl.failed; i++)
        alloc_group(t, &t->tg[i], false);
    if (!t->pl.failed) {
        alloc_head(t, &t->sh, nviews * B, true);
        alloc_head(t, &t->th, 2 * B, false);
    }
    int K = m->out_dim;
    t->sfeat = palloc(&t->pl, (size_t)nviews * B * m->embed_dim);
    t->tfeat = palloc(&t->pl, (size_t)2 * B * m->embed_dim);
    t->center = palloc(&t->pl, K);
    t->cmean = palloc(&t->pl, K);
    t->q = palloc(&t->pl, (size_t)2 * B * K);
    t->loss = palloc(&t->pl, 1);
    if (t->pl.failed || bind_all(t)) {
        dino_trainer_free(t);
        return NULL;
    }
    t->pl.err = NULL; /* the caller's err does not outlive this call */
    return t;
}

void dino_trainer_free(dino_trainer *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nsg; i++)
        free_group(&t->sg[i], t->mc.depth);
    for (int i = 0; i < t->ntg; i++)
        free_group(&t->tg[i], t->mc.depth);
    for (int r = 0; r < 5; r++)
        free(t->w[r].blocks);
    pool_free(&t->pl);
    free(t->tab), free(t->adam_step), free(t->offs), free(t->lens), free(t->norms);
    free(t->adam);
    free(t);
}

const dino_param *dino_trainer_params(const dino_trainer *t, int *n)
{
    *n = t->np;
    return t->tab;
}

size_t dino_trainer_nfloats(const dino_trainer *t) { return t->total; }

float *dino_trainer_buffer(dino_trainer *t, dino_role r) { return t->buf[r]; }

int *dino_trainer_adam_steps(dino_trainer *t) { return t->adam_step; }

/* ---- initialisation ---------------------------------------------------------------------- */

/* timm's trunc_normal_(std=.02): a normal with std, redrawn outside the
 * absolute bounds [-2, 2] (which at std 0.02 never happens, but it is the
 * definition). */
static float trunc_normal(rng *r, double std)
{
    for (;;) {
        double x = rng_normal(r) * std;
        if (x >= -2 && x <= 2)
            return (float)x;
    }
}

static int64_t patch_fan_in(const dino_model_cfg *c) { return (int64_t)c->in_chans * c->patch * c->patch; }

static void fill_uniform(float *h, size_t n, double bound, rng *r)
{
    for (size_t i = 0; i < n; i++)
        h[i] = (float)rng_range(r, -bound, bound);
}

/* DINO's scheme, decided by the parameter's role in the model */
static void init_param(const dino_model_cfg *c, const dino_param *p, float *h, rng *r)
{
    const char *nm = p->name;
    size_t len = strlen(nm);
    bool bias = len >= 5 && !strcmp(nm + len - 5, "/bias");
    memset(h, 0, p->n * sizeof(float)); /* biases */
    if (strstr(nm, "patch_embed"))
        fill_uniform(h, p->n, 1.0 / sqrt((double)patch_fan_in(c)), r);
    else if (strstr(nm, "weight_v"))
        fill_uniform(h, p->n, 1.0 / sqrt((double)c->bottleneck_dim), r);
    else if (strstr(nm, "weight_g") || (strstr(nm, "norm") && !bias))
        for (size_t i = 0; i < p->n; i++)
            h[i] = 1;
    else if (!bias && !strstr(nm, "norm"))
        for (size_t i = 0; i < p->n; i++)
            h[i] = trunc_normal(r, 0.02); /* linears, cls token, position embedding */
}

int dino_trainer_init(dino_trainer *t, uint64_t seed, gd_err *err)
{
    gd_backend *be = t->be;
    size_t maxn = 0;
    for (int i = 0; i < t->np; i++)
        maxn = t->tab[i].n > maxn ? t->tab[i].n : maxn;
    float *h = malloc(maxn * sizeof(float));
    if (!h)
        return gd_errf(err, "out of memory");
    for (int i = 0; i < t->np; i++) {
        rng r;
        rng_init(&r, seed, 0x1417, (uint64_t)i, 0); /* one stream per tensor */
        init_param(&t->mc, &t->tab[i], h, &r);
        if (be->upload(be, t->buf[DINO_STUDENT] + t->tab[i].off, h, t->tab[i].n, err)) {
            free(h);
            return -1;
        }
    }
    free(h);
    be->copy(be, t->buf[DINO_TEACHER], t->buf[DINO_STUDENT], t->total);
    be->fill(be, t->buf[DINO_ADAM_M], 0, t->total);
    be->fill(be, t->buf[DINO_ADAM_V], 0, t->total);
    be->fill(be, t->center, 0, t->mc.out_dim);
    memset(t->adam_step, 0, t->np * sizeof(int));
    return be->sync(be, err);
}

/* ---- layers --------------------------------------------------------------------------------- */

/* y [M, out] = x [M, in] W^T + b, W [out, in] as nn.Linear */
static void linear_fwd(gd_backend *be, float *y, const float *x, const lin_w *l, int M, int in,
                       int out)
{
    be->gemm(be, false, true, M, out, in, 1.0f, x, in, 0, l->w, in, 0, 0.0f, y, out, 0, 1);
    be->bias_add(be, y, l->b, M, out);
}

/* dx = dy W (when dx), dW += dy^T x, db += colsum dy */
static void linear_bwd(gd_backend *be, float *dx, lin_w *g, const float *dy, const float *x,
                       const float *w, int M, int in, int out)
{
    if (dx)
        be->gemm(be, false, false, M, in, out, 1.0f, dy, out, 0, w, in, 0, 0.0f, dx, in, 0, 1);
    be->gemm(be, true, false, out, in, M, 1.0f, dy, out, 0, x, in, 0, 1.0f, g->w, in, 0, 1);
    be->bias_grad(be, g->b, dy, M, out);
}

/* DINO's drop_path: per sample, kept with probability 1 - rate and then
 * scaled by 1 / (1 - rate).  Rates rise linearly over the blocks. */
static void draw_drop_path(const dino_trainer *t, grp *g, int gi, long it)
{
    int depth = t->mc.depth;
    int rank = t->comm ? t->comm->rank : 0, world = t->comm ? t->comm->world : 1;
    for (int i = 0; i < depth; i++) {
        double rate = depth > 1 ? t->mc.drop_path_rate * i / (depth - 1) : t->mc.drop_path_rate;
        for (int k = 0; k < 2; k++) {
            float *s = k ? g->blk[i].s2 : g->blk[i].s1;
            rng r;
            rng_init(&r, t->seed, 0xd409 + (uint64_t)it, (uint64_t)gi * 1000 + i, k);
            /* row b is sample b % B of view b / B; one process with the
             * whole batch of B * world would draw it at position `at` */
            long next = 0;
            for (int b = 0; b < g->B; b++) {
                long at = ((long)(b / t->B) * world + rank) * t->B + b % t->B;
                for (; next < at; next++)
                    rng_uniform(&r);
                next++;
                s[b] = rng_uniform(&r) < rate ? 0.0f : (float)(1.0 / (1.0 - rate));
            }
        }
    }
}

static bool use_drop_path(const dino_trainer *t, bool train) { return train && t->mc.drop_path_rate > 0; }

static void block_fwd(dino_trainer *t, const block_w *w, blk_acts *a, const float *x, int B, int T,
                      bool drop)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int D = c->embed_dim, F = c->mlp_ratio * D, M = B * T, H = c->num_heads;
    be->layernorm_fwd(be, a->ln1, a->ln1_m, a->ln1_r, x, w->norm1.w, w->norm1.b, M, D, c->ln_eps);
    linear_fwd(be, a->qkv, a->ln1, &w->qkv, M, D, 3 * D);
    be->attention_fwd(be, a->attn, a->att, a->qkv, B, T, H, D / H);
    linear_fwd(be, a->proj, a->attn, &w->proj, M, D, D);
    if (drop)
        be->scale_rows(be, a->proj, a->proj, a->s1, B, (size_t)T * D);
    be->add(be, a->xmid, x, a->proj, (size_t)M * D);
    be->layernorm_fwd(be, a->ln2, a->ln2_m, a->ln2_r, a->xmid, w->norm2.w, w->norm2.b, M, D,
                      c->ln_eps);
    linear_fwd(be, a->fc1, a->ln2, &w->fc1, M, D, F);
    be->gelu_fwd(be, a->act, a->fc1, (size_t)M * F);
    linear_fwd(be, a->mlp, a->act, &w->fc2, M, F, D);
    if (drop)
        be->scale_rows(be, a->mlp, a->mlp, a->s2, B, (size_t)T * D);
    be->add(be, a->xout, a->xmid, a->mlp, (size_t)M * D);
}

/* g->dres holds d loss / d x_out on entry and d loss / d x_in on exit. */
static void block_bwd(dino_trainer *t, const block_w *w, block_w *gw, blk_acts *a, grp *g,
                      const float *x, bool drop)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int B = g->B, T = g->T, D = c->embed_dim, F = c->mlp_ratio * D, M = B * T, H = c->num_heads;
    const float *dy = g->dres;
    if (drop) {
        be->scale_rows(be, g->dtmp, g->dres, a->s2, B, (size_t)T * D);
        dy = g->dtmp;
    }
    linear_bwd(be, g->dh4, &gw->fc2, dy, a->act, w->fc2.w, M, F, D);
    be->gelu_bwd(be, g->dh4, a->fc1, g->dh4, (size_t)M * F);
    linear_bwd(be, g->dln, &gw->fc1, g->dh4, a->ln2, w->fc1.w, M, D, F);
    be->layernorm_bwd(be, g->dres, gw->norm2.w, gw->norm2.b, g->dln, a->xmid, w->norm2.w, a->ln2_m,
                      a->ln2_r, M, D);
    dy = g->dres;
    if (drop) {
        be->scale_rows(be, g->dtmp, g->dres, a->s1, B, (size_t)T * D);
        dy = g->dtmp;
    }
    linear_bwd(be, g->dattn, &gw->proj, dy, a->attn, w->proj.w, M, D, D);
    be->attention_bwd(be, g->dqkv, g->datt, g->dattn, a->qkv, a->att, B, T, H, D / H);
    linear_bwd(be, g->dln, &gw->qkv, g->dqkv, a->ln1, w->qkv.w, M, D, 3 * D);
    be->layernorm_bwd(be, g->dres, gw->norm1.w, gw->norm1.b, g->dln, x, w->norm1.w, a->ln1_m,
                      a->ln1_r, M, D);
}

/* The backbone on one crop group: features (final-norm CLS) into feat. */
static void group_fwd(dino_trainer *t, grp *g, int gi, const dino_w *w, float *const *views,
                      float *feat, bool train, long it)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int D = c->embed_dim, p = c->patch, cpp = c->in_chans * p * p, gn = c->img_size / p;
    const float *pos = w->pos;
    if (g->interp) {
        be->posinterp_fwd(be, g->pos, w->pos, gn, g->gh, g->gh, g->scale, g->scale, D);
        pos = g->pos;
    }
    for (int v = 0; v < g->nviews; v++)
        be->patchify(be, g->patches + (size_t)v * t->B * g->np * cpp, views[g->first_view + v],
                     t->B, c->in_chans, g->res, g->res, p);
    linear_fwd(be, g->pemb, g->patches, &w->patch, g->B * g->np, cpp, D);
    be->tokens_fwd(be, g->x0, g->pemb, w->cls, pos, g->B, g->np, D);
    bool drop = use_drop_path(t, train);
    if (drop)
        draw_drop_path(t, g, gi, it);
    const float *x = g->x0;
    for (int i = 0; i < c->depth; i++) {
        block_fwd(t, &w->blocks[i], &g->blk[i], x, g->B, g->T, drop);
        x = g->blk[i].xout;
    }
    be->copy_rows(be, g->cls, D, x, (size_t)g->T * D, g->B, D);
    be->layernorm_fwd(be, feat, g->out_m, g->out_r, g->cls, w->norm.w, w->norm.b, g->B, D,
                      c->ln_eps);
}

/* From g->dres (d loss / d block-0 input) to the gradients of the CLS
 * token, position embedding and patch embedding. */
static void embed_bwd(dino_trainer *t, grp *g, const dino_w *w, dino_w *gw)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int D = c->embed_dim, p = c->patch, cpp = c->in_chans * p * p, gn = c->img_size / p;
    if (g->interp) {
        be->fill(be, g->dpos, 0, (size_t)g->T * D);
        be->tokens_bwd(be, g->dpemb, gw->cls, g->dpos, g->dres, g->B, g->np, D);
        be->posinterp_bwd(be, gw->pos, g->dpos, gn, g->gh, g->gh, g->scale, g->scale, D);
    } else {
        be->tokens_bwd(be, g->dpemb, gw->cls, gw->pos, g->dres, g->B, g->np, D);
    }
    linear_bwd(be, NULL, &gw->patch, g->dpemb, g->patches, w->patch.w, g->B * g->np, cpp, D);
}

/* The gradients from offset lo of the flat buffer up to those already
 * final are final too: the backward pass writes them no more.  They become
 * final from the end of the buffer towards its start (head, final norm,
 * last block, ..., first block, embeddings: walk_model's order reversed),
 * so what waits for its reduction is one range [red_lo, red_hi); it goes
 * out as a bucket once it holds t->bucket floats, or with flush. */
static void grads_final(dino_trainer *t, const float *lo, bool flush)
{
    if (!t->overlap || t->comm_failed)
        return;
    t->red_lo = (size_t)(lo - t->buf[DINO_GRAD]);
    size_t n = t->red_hi - t->red_lo;
    if (!n || (n < t->bucket && !flush))
        return;
    if (t->comm->allreduce_start(t->comm, t->buf[DINO_GRAD] + t->red_lo, n, &t->comm_err))
        t->comm_failed = -1;
    t->red_hi = t->red_lo;
}

/* last: the last crop group's backward, after which a tensor's gradient
 * is final */
static void group_bwd(dino_trainer *t, grp *g, const dino_w *w, dino_w *gw, const float *dfeat,
                      bool drop, bool last)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int D = c->embed_dim;
    be->fill(be, g->dcls, 0, (size_t)g->B * D);
    be->layernorm_bwd(be, g->dcls, gw->norm.w, gw->norm.b, dfeat, g->cls, w->norm.w, g->out_m,
                      g->out_r, g->B, D);
    if (last)
        grads_final(t, gw->norm.w, false);
    /* only the CLS rows of the last block's output carry a gradient */
    be->fill(be, g->dres, 0, (size_t)g->B * g->T * D);
    be->copy_rows(be, g->dres, (size_t)g->T * D, g->dcls, D, g->B, D);
    for (int i = c->depth - 1; i >= 0; i--) {
        block_bwd(t, &w->blocks[i], &gw->blocks[i], &g->blk[i], g, i ? g->blk[i - 1].xout : g->x0,
                  drop);
        if (last)
            grads_final(t, gw->blocks[i].norm1.w, false);
    }
    embed_bwd(t, g, w, gw);
    if (last)
        grads_final(t, t->buf[DINO_GRAD], true);
}

/* DINOHead: 3-layer MLP with GELU, L2 normalisation, weight-normalised
 * last layer without bias. */
static void head_fwd(dino_trainer *t, head_acts *h, const dino_w *w, const float *feat)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int R = h->R, D = c->embed_dim, hid = c->hidden_dim, bn = c->bottleneck_dim, K = c->out_dim;
    linear_fwd(be, h->h1, feat, &w->mlp[0], R, D, hid);
    be->gelu_fwd(be, h->g1, h->h1, (size_t)R * hid);
    linear_fwd(be, h->h2, h->g1, &w->mlp[1], R, hid, hid);
    be->gelu_fwd(be, h->g2, h->h2, (size_t)R * hid);
    linear_fwd(be, h->h3, h->g2, &w->mlp[2], R, hid, bn);
    be->l2norm_fwd(be, h->z, h->zn, h->h3, R, bn, 1e-12f);
    be->weightnorm_fwd(be, h->W, h->Wn, w->last_g, w->last_v, K, bn);
    be->gemm(be, false, true, R, K, bn, 1.0f, h->z, bn, 0, h->W, bn, 0, 0.0f, h->out, K, 0, 1);
}

static void head_bwd(dino_trainer *t, head_acts *h, const dino_w *w, dino_w *gw, const float *feat)
{
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int R = h->R, D = c->embed_dim, hid = c->hidden_dim, bn = c->bottleneck_dim, K = c->out_dim;
    be->gemm(be, true, false, K, bn, R, 1.0f, h->dout, K, 0, h->z, bn, 0, 0.0f, h->dW, bn, 0, 1);
    be->gemm(be, false, false, R, bn, K, 1.0f, h->dout, K, 0, h->W, bn, 0, 0.0f, h->dz, bn, 0, 1);
    be->weightnorm_bwd(be, c->norm_last_layer ? NULL : gw->last_g, gw->last_v, h->dW, w->last_g,
                       w->last_v, h->Wn, K, bn);
    be->l2norm_bwd(be, h->dh3, h->dz, h->z, h->zn, R, bn, 1e-12f);
    linear_bwd(be, h->dg2, &gw->mlp[2], h->dh3, h->g2, w->mlp[2].w, R, hid, bn);
    be->gelu_bwd(be, h->dg2, h->h2, h->dg2, (size_t)R * hid);
    linear_bwd(be, h->dg1, &gw->mlp[1], h->dg2, h->g1, w->mlp[1].w, R, hid, hid);
    be->gelu_bwd(be, h->dg1, h->h1, h->dg1, (size_t)R * hid);
    linear_bwd(be, h->dfeat, &gw->mlp[0], h->dg1, feat, w->mlp[0].w, R, D, hid);
}

/* ---- loss and step ----------------------------------------------------------------------------- */

int dino_trainer_loss(dino_trainer *t, float *const *views, long it, double temp, bool grads,
                      double *loss, gd_err *err)
{
    gd_backend *be = t->be;
    int D = t->mc.embed_dim, K = t->mc.out_dim, B = t->B;
    dino_w *ws = &t->w[DINO_STUDENT], *wt = &t->w[DINO_TEACHER], *wg = &t->w[DINO_GRAD];
    for (int i = 0; i < t->ntg; i++)
        group_fwd(t, &t->tg[i], i, wt, views, t->tfeat + (size_t)t->tg[i].first_view * B * D, false,
                  it);
    head_fwd(t, &t->th, wt, t->tfeat);
    for (int i = 0; i < t->nsg; i++)
        group_fwd(t, &t->sg[i], i, ws, views, t->sfeat + (size_t)t->sg[i].first_view * B * D, true,
                  it);
    head_fwd(t, &t->sh, ws, t->sfeat);
    be->dino_teacher_probs(be, t->q, t->th.out, t->center, (float)temp, 2 * B, K);
    be->dino_loss(be, t->loss, grads ? t->sh.dout : NULL, t->sh.out, t->q, 2, t->nviews, B, K,
                  (float)t->tc.student_temp);
    if (grads) {
        be->fill(be, t->buf[DINO_GRAD], 0, t->total);
        t->red_lo = t->red_hi = t->total;
        head_bwd(t, &t->sh, ws, wg, t->sfeat);
        grads_final(t, wg->mlp[0].w, false);
        bool drop = use_drop_path(t, true);
        for (int i = 0; i < t->nsg; i++)
            group_bwd(t, &t->sg[i], ws, wg, t->sh.dfeat + (size_t)t->sg[i].first_view * B * D,
                      drop, i == t->nsg - 1);
    }
    float l;
    if (be->download(be, &l, t->loss, 1, err) || be->sync(be, err))
        return -1;
    *loss = l;
    return 0;
}

void dino_trainer_set_comm(dino_trainer *t, gd_comm *c) { t->comm = c; }
void dino_trainer_set_buckets(dino_trainer *t, size_t floats) { t->bucket = floats; }

/* The mean over ranks, in place, of n floats of a device buffer or of one
 * host double. */
static int average(dino_trainer *t, float *buf, size_t n, double *x, gd_err *err)
{
    gd_comm *c = t->comm;
    if (x) {
        if (c->allreduce_f64(c, x, 1, err))
            return gd_err_prefix(err, "rank %d", c->rank);
        *x /= c->world;
        return 0;
    }
    if (t->be->sync(t->be, err))
        return -1;
    if (c->allreduce_sum(c, buf, n, err))
        return gd_err_prefix(err, "rank %d", c->rank);
    t->be->scale(t->be, buf, 1.0f / c->world, n);
    return 0;
}

int dino_trainer_step(dino_trainer *t, float *const *views, long it, dino_step_stats *st,
                      gd_err *err)
{
    gd_backend *be = t->be;
    const dino_train_cfg *c = &t->tc;
    dino_sched s = dino_schedule(c, it);
    long epoch = it / c->niter_per_epoch;
    *st = (dino_step_stats){.lr = s.lr, .weight_decay = s.weight_decay, .momentum = s.momentum,
                            .teacher_temp = s.teacher_temp};
    /* a distributed communicator of one rank goes through its collectives
     * too: that is how a transport is checked against a plain run */
    bool dist = t->comm && t->comm != gd_comm_single();
    bool buckets = dist && t->bucket > 0;
    t->overlap = buckets, t->comm_failed = 0;
    int rc = dino_trainer_loss(t, views, it, s.teacher_temp, true, &st->loss, err);
    t->overlap = false;
    if (rc)
        return -1;
    if (t->comm_failed)
        return gd_errf(err, "rank %d: %s", t->comm->rank, t->comm_err.msg);
    if (dist && average(t, NULL, 0, &st->loss, err)) /* every rank sees the same loss */
        return -1;
    if (!isfinite(st->loss))
        return gd_errf(err, "iteration %ld: loss is %g, stopping training", it, st->loss);
    if (dist) {
        /* center with the global batch mean: the mean of the ranks' means */
        be->center_update(be, t->cmean, t->th.out, 2 * t->B, t->mc.out_dim, 0.0f);
        if (average(t, t->cmean, t->mc.out_dim, NULL, err))
            return -1;
        if (buckets && t->comm->allreduce_wait(t->comm, err))
            return gd_err_prefix(err, "rank %d", t->comm->rank);
        if (buckets)
            be->scale(be, t->buf[DINO_GRAD], 1.0f / t->comm->world, t->total);
        else if (average(t, t->buf[DINO_GRAD], t->total, NULL, err))
            return -1;
        be->scale(be, t->center, (float)c->center_momentum, t->mc.out_dim);
        be->axpy(be, t->center, (float)(1 - c->center_momentum), t->cmean, t->mc.out_dim);
    } else {
        be->center_update(be, t->center, t->th.out, 2 * t->B, t->mc.out_dim,
                          (float)c->center_momentum);
    }

    /* clip_gradients: every tensor that has a gradient, each on its own */
    int n = 0;
    for (int i = 0; i < t->np; i++)
        if (t->tab[i].trainable)
            t->offs[n] = t->tab[i].off, t->lens[n] = t->tab[i].n, n++;
    if (be->clip_per_tensor(be, t->buf[DINO_GRAD], t->offs, t->lens, n, (float)c->clip_grad,
                            t->norms, err))
        return -1;
    for (int i = 0; i < n; i++)
        st->nclipped += c->clip_grad > 0 && c->clip_grad / (t->norms[i] + 1e-6) < 1;

    /* cancel_gradients_last_layer sets the gradient to None: torch's AdamW
     * then skips the tensor entirely (no decay, no moment, no step count).
     * AdamW and the teacher's EMA go in one pass over the buffers. */
    st->last_layer_frozen = epoch < c->freeze_last_layer;
    int na = 0;
    for (int i = 0; i < t->np; i++) {
        const dino_param *p = &t->tab[i];
        if (!p->trainable || (st->last_layer_frozen && p->last_layer))
            continue;
        t->adam[na++] = (gd_adam_tensor){.off = p->off, .n = p->n,
                                         .wd = p->decay ? (float)s.weight_decay : 0.0f,
                                         .step = ++t->adam_step[i]};
    }
    be->adamw_ema(be, t->buf[DINO_STUDENT], t->buf[DINO_GRAD], t->buf[DINO_ADAM_M],
                  t->buf[DINO_ADAM_V], t->buf[DINO_TEACHER], t->total, t->adam, na, (float)s.lr,
                  (float)c->beta1, (float)c->beta2, (float)c->adam_eps, (float)s.momentum);
    return be->sync(be, err);
}

/* t->norms holds clip_per_tensor's norms, trainable parameters only. */
void dino_trainer_grad_norms(const dino_trainer *t, double *norms)
{
    for (int i = 0, k = 0; i < t->np; i++)
        norms[i] = t->tab[i].trainable ? t->norms[k++] : 0;
}

int dino_trainer_features(dino_trainer *t, dino_role r, float *const *views, float *feat,
                          gd_err *err)
{
    if (r != DINO_STUDENT && r != DINO_TEACHER)
        return gd_errf(err, "features: only the student or the teacher");
    int D = t->mc.embed_dim, B = t->B;
    for (int i = 0; i < t->ntg; i++)
        group_fwd(t, &t->tg[i], i, &t->w[r], views,
                  t->tfeat + (size_t)t->tg[i].first_view * B * D, false, 0);
    if (t->be->download(t->be, feat, t->tfeat, (size_t)2 * B * D, err))
        return -1;
    return t->be->sync(t->be, err);
}

/* The normed tokens are averaged on the host in double: embedding is not
 * the hot path, and one download serves both the CLS and the mean. */
int dino_trainer_features_avgpool(dino_trainer *t, dino_role r, float *const *views, float *feat,
                                  gd_err *err)
{
    if (r != DINO_STUDENT && r != DINO_TEACHER)
        return gd_errf(err, "features: only the student or the teacher");
    if (t->nsg != 1)
        return gd_errf(err, "features: the views must have one size");
    gd_backend *be = t->be;
    const dino_model_cfg *c = &t->mc;
    int D = c->embed_dim;
    grp *g = &t->sg[0]; /* the student's group holds every token of the last block */
    group_fwd(t, g, 0, &t->w[r], views, t->sfeat, false, 0);
    size_t rows = (size_t)g->B * g->T;
    float *y = be->alloc(be, rows * D, err), *m = y ? be->alloc(be, rows, err) : NULL,
          *rs = m ? be->alloc(be, rows, err) : NULL, *h = malloc(rows * D * sizeof *h);
    int rc = -1;
    if (!rs)
        goto out;
    if (!h) {
        gd_errf(err, "out of memory");
        goto out;
    }
    be->layernorm_fwd(be, y, m, rs, g->blk[c->depth - 1].xout, t->w[r].norm.w, t->w[r].norm.b,
                      (int)rows, D, c->ln_eps);
    if (be->download(be, h, y, rows * D, err) || be->sync(be, err))
        goto out;
    for (int b = 0; b < g->B; b++) {
        const float *tok = h + (size_t)b * g->T * D;
        float *f = feat + (size_t)b * 2 * D;
        for (int i = 0; i < D; i++) {
            double s = 0;
            for (int k = 1; k < g->T; k++)
                s += tok[(size_t)k * D + i];
            f[2 * i] = tok[i];
            f[2 * i + 1] = (float)(s / g->np);
        }
    }
    rc = 0;
out:
    be->release(be, y), be->release(be, m), be->release(be, rs);
    free(h);
    return rc;
}

int dino_trainer_outputs(dino_trainer *t, float *student, float *teacher, gd_err *err)
{
    size_t K = t->mc.out_dim;
    if (student && t->be->download(t->be, student, t->sh.out, t->nviews * t->B * K, err))
        return -1;
    if (teacher && t->be->download(t->be, teacher, t->th.out, 2 * t->B * K, err))
        return -1;
    return 0;
}

/* ---- state by name ---------------------------------------------------------------------------- */

const char *dino_role_prefix(dino_role r)
{
    static const char *p[] = {"student/", "teacher/", "adam_m/", "adam_v/", "grad/"};
    return p[r];
}

int dino_trainer_load(dino_trainer *t, dino_role r, const msg *m, const char *prefix, gd_err *err)
{
    char name[160];
    for (int i = 0; i < t->np; i++) {
        const dino_param *p = &t->tab[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const tensor *x = msg_require_tensor(m, name, DT_F4, p->ndim, err);
        if (!x)
            return -1;
        for (int d = 0; d < p->ndim; d++)
            if (x->shape[d] != p->shape[d])
                return gd_errf(err, "tensor \"%s\": dimension %d is %lld, the model needs %lld",
                               name, d, (long long)x->shape[d], (long long)p->shape[d]);
        if (t->be->upload(t->be, t->buf[r] + p->off, x->data, p->n, err))
            return -1;
    }
    return 0;
}

int dino_trainer_export(dino_trainer *t, dino_role r, msg *m, const char *prefix, gd_err *err)
{
    char name[160];
    for (int i = 0; i < t->np; i++) {
        const dino_param *p = &t->tab[i];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        tensor *x = msg_add_tensor(m, name, DT_F4, p->ndim, p->shape);
        if (!x)
            return gd_errf(err, "tensor \"%s\": out of memory", name);
        if (t->be->download(t->be, x->data, t->buf[r] + p->off, p->n, err))
            return -1;
    }
    return 0;
}

int dino_trainer_get_center(dino_trainer *t, float *host, gd_err *err)
{
    return t->be->download(t->be, host, t->center, t->mc.out_dim, err);
}

int dino_trainer_set_center(dino_trainer *t, const float *host, gd_err *err)
{
    return t->be->upload(t->be, t->center, host, t->mc.out_dim, err);
}

/* Additive, for mpa-adapt: the same teacher-group forward as
 * dino_trainer_features, keeping the patch tokens of chosen blocks. */
int dino_trainer_tokens(dino_trainer *t, dino_role r, float *const *views, const int *blocks,
                        int nblocks, float *const *out, gd_err *err)
{
    if (r != DINO_STUDENT && r != DINO_TEACHER)
        return gd_errf(err, "tokens: only the student or the teacher");
    if (t->nsg != 1)
        return gd_errf(err, "tokens: the views must have one size");
    for (int l = 0; l < nblocks; l++)
        if (blocks[l] < 1 || blocks[l] > t->mc.depth)
            return gd_errf(err, "tokens: block %d is outside 1..%d", blocks[l], t->mc.depth);
    int D = t->mc.embed_dim;
    grp *g = &t->sg[0]; /* the student's group: it has the buffers of a backward */
    group_fwd(t, g, 0, &t->w[r], views, t->sfeat, false, 0);
    for (int l = 0; l < nblocks; l++)
        t->be->copy_rows(t->be, out[l], (size_t)g->np * D, g->blk[blocks[l] - 1].xout + D,
                         (size_t)g->T * D, g->B, (size_t)g->np * D);
    return t->be->sync(t->be, err);
}

int dino_trainer_tokens_bwd(dino_trainer *t, dino_role r, const int *blocks, int nblocks,
                            float *const *dtok, gd_err *err)
{
    if (r != DINO_STUDENT && r != DINO_TEACHER)
        return gd_errf(err, "tokens: only the student or the teacher");
    gd_backend *be = t->be;
    int D = t->mc.embed_dim, top = 0;
    grp *g = &t->sg[0];
    for (int l = 0; l < nblocks; l++) {
        if (blocks[l] < 1 || blocks[l] > t->mc.depth)
            return gd_errf(err, "tokens: block %d is outside 1..%d", blocks[l], t->mc.depth);
        top = blocks[l] > top ? blocks[l] : top;
    }
    dino_w *w = &t->w[r], *gw = &t->w[DINO_GRAD];
    be->fill(be, g->dres, 0, (size_t)g->B * g->T * D);
    /* blocks above the highest level have no gradient; each level's
     * gradient joins the residual stream at its block's output */
    for (int i = top - 1; i >= 0; i--) {
        for (int l = 0; l < nblocks; l++)
            if (blocks[l] == i + 1)
                for (int b = 0; b < g->B; b++)
                    be->axpy(be, g->dres + ((size_t)b * g->T + 1) * D, 1.0f,
                             dtok[l] + (size_t)b * g->np * D, (size_t)g->np * D);
        block_bwd(t, &w->blocks[i], &gw->blocks[i], &g->blk[i], g, i ? g->blk[i - 1].xout : g->x0,
                  false);
    }
    embed_bwd(t, g, w, gw);
    return be->sync(be, err);
}
