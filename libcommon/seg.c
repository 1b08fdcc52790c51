/* seg.c: the segmentation model of seg.h.  Numerical work goes through
 * the backend seam; this file decides shapes, buffers and order. */
#include "seg.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "io.h"
#include "multicrop.h"
#include "raster.h"
#include "rng.h"

#define MAX_SIZES 8
#define DMLP_LN_EPS 1e-6f

/* The tensors of one dmlp block, in table order (seg.h). */
enum { DM_LN1W, DM_LN1B, DM_DWW, DM_DWB, DM_OFFW, DM_OFFB, DM_FCW, DM_FCB, DM_LN2W, DM_LN2B,
       DM_FC1W, DM_FC1B, DM_FC2W, DM_FC2B, DM_NT };

/* Saved activations of one dmlp block (rows R = maps x g x g). */
typedef struct dmlp_acts {
    float *xin;               /* [R, E] its input (block 0: the level sum) */
    float *h1, *m1, *r1;      /* LN1 output [R, E], mean and rstd [R] */
    float *d, *om, *smp;      /* dwconv [R, E], raw offsets [R, 3], sampled [R, E] */
    float *x1, *h2, *m2, *r2; /* after the deformable part; LN2 */
    float *z, *u;             /* fc1 output, GELU [R, 4E] */
} dmlp_acts;

/* Device buffers of passes over tiles of one size. */
typedef struct seg_ws {
    int S, g, np;             /* tile size, token grid side, tokens per tile */
    dino_trainer *t;          /* the backbone at this size */
    float *stage;             /* [2B, C, S0, S0] input before a resize (lazily) */
    size_t stage_n;
    float *views;             /* [2B, C, S, S] */
    float *tok[SEG_MAX_LEVELS], *nrm[SEG_MAX_LEVELS], *ln_m[SEG_MAX_LEVELS], *ln_r[SEG_MAX_LEVELS];
    float *fused, *logit_t, *logit, *dlogit, *dlogit_t, *dfused, *dproto;
    float *lab, *lab_t, *loss, *protos, *cw, *sums, *counts;
    float *dtok[SEG_MAX_LEVELS], *dnrm; /* fine-tuning */
    dmlp_acts blk[SEG_MAX_DMLP_BLOCKS];  /* dmlp head */
    float *bx1, *bs, *bh, *bh2, *bz, *bu, *bom; /* its backward scratch */
    int nvalid;               /* tiles of the last pass */
    long ver;                 /* the backbone version its trainer holds */
} seg_ws;

struct seg_model {
    gd_backend *be;
    seg_cfg c;
    run_config rc;
    int B;                    /* images per backbone view; a pass holds 2B */
    uint64_t seed;
    dino_param *btab;         /* the DINO parameter table */
    int nb;
    size_t bfloats;
    float *bhost;             /* the chosen role's weights, host, table layout */
    size_t norm_w, norm_b;    /* offsets of backbone/norm */
    dino_param *dtab;         /* decoder tensors */
    int nd;
    size_t dfloats;
    float *P, *G, *M, *V;     /* decoder weights, gradient, moments (device) */
    long opt_steps;
    bool finetune;            /* the backbone trains too */
    double backbone_lr_mult;
    long ver, host_ver;       /* backbone versions: the newest, and bhost's */
    int train_ws;             /* the workspace whose trainer holds the newest backbone */
    seg_ws ws[MAX_SIZES];
    int nws;
    float *hbuf;              /* host scratch */
    size_t hbuf_n;
};

/* ---- configuration -------------------------------------------------------- */

const char *seg_head_name(seg_head h) { return h == SEG_HEAD_DMLP ? "dmlp" : "plain"; }

int seg_parse_head(const char *name, seg_head *h, gd_err *err)
{
    if (!strcmp(name, "plain"))
        *h = SEG_HEAD_PLAIN;
    else if (!strcmp(name, "dmlp"))
        *h = SEG_HEAD_DMLP;
    else
        return gd_errf(err, "head '%s' is not plain or dmlp", name);
    return 0;
}

int seg_parse_levels(seg_cfg *c, const char *spec, int depth, gd_err *err)
{
    double v[SEG_MAX_LEVELS + 1];
    const char *s = spec;
    int n = 0;
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || (*end && *end != ','))
            return gd_errf(err, "--levels: '%s' is not a list of block numbers", spec);
        if (n == SEG_MAX_LEVELS)
            return gd_errf(err, "--levels: at most %d levels", SEG_MAX_LEVELS);
        if (x < 1 || x > depth)
            return gd_errf(err, "--levels: block %ld is outside 1..%d (the model's depth)", x,
                           depth);
        v[n++] = (double)x;
        s = *end ? end + 1 : end;
    }
    if (n == 0)
        return gd_errf(err, "--levels: no level given");
    for (int i = 0; i < n; i++) {
        c->levels[i] = (int)v[i];
        for (int j = 0; j < i; j++)
            if (c->levels[j] == c->levels[i])
                return gd_errf(err, "--levels: block %d is given twice", c->levels[i]);
    }
    c->nlevels = n;
    return 0;
}

const seg_cfg *seg_model_cfg(const seg_model *s) { return &s->c; }
const run_config *seg_model_run(const seg_model *s) { return &s->rc; }
int seg_model_batch(const seg_model *s) { return 2 * s->B; }
gd_backend *seg_model_backend(const seg_model *s) { return s->be; }

float *seg_model_params(seg_model *s, size_t *n)
{
    *n = s->dfloats;
    return s->P;
}

float *seg_model_grads(seg_model *s, size_t *n)
{
    *n = s->dfloats;
    return s->G;
}

static int sync_host(seg_model *s, gd_err *err);

/* ---- construction ---------------------------------------------------------- */

static void dreg(seg_model *s, const char *name, int ndim, int64_t a, int64_t b)
{
    dino_param *p = &s->dtab[s->nd++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = a, p->shape[1] = b;
    p->n = (size_t)a * (ndim > 1 ? (size_t)b : 1);
    p->off = s->dfloats;
    p->decay = ndim > 1;
    p->trainable = true;
    s->dfloats += (p->n + 15) / 16 * 16;
}

/* Block i's tensors (in DM_* order; a bias right after its weight). */
static void dmlp_register(seg_model *s, int i)
{
    int E = s->c.emb_chans, Hd = SEG_DMLP_MLP_RATIO * E;
    static const char *names[DM_NT] = {"ln1/weight", "ln1/bias", "dw/weight", "dw/bias",
                                       "offset/weight", "offset/bias", "fc/weight", "fc/bias",
                                       "ln2/weight", "ln2/bias", "fc1/weight", "fc1/bias",
                                       "fc2/weight", "fc2/bias"};
    const int64_t shape[DM_NT][2] = {{E, 0}, {E, 0}, {E, 9}, {E, 0},  {3, E},  {3, 0}, {E, E},
                                     {E, 0}, {E, 0}, {E, 0}, {Hd, E}, {Hd, 0}, {E, Hd}, {E, 0}};
    char name[96];
    for (int k = 0; k < DM_NT; k++) {
        snprintf(name, sizeof name, "decoder/dmlp/%d/%s", i, names[k]);
        dreg(s, name, shape[k][1] ? 2 : 1, shape[k][0], shape[k][1]);
    }
}

static int build_decoder_table(seg_model *s, gd_err *err)
{
    int L = s->c.nlevels, E = s->c.emb_chans, K = s->c.num_classes, D = s->rc.model.embed_dim;
    int N = s->c.head == SEG_HEAD_DMLP ? s->c.dmlp_blocks : 0;
    s->dtab = calloc(2 * L + 2 + (size_t)DM_NT * N, sizeof *s->dtab);
    if (!s->dtab)
        return gd_errf(err, "out of memory");
    char name[96];
    for (int l = 0; l < L; l++) {
        snprintf(name, sizeof name, "decoder/proj/%d/weight", l);
        dreg(s, name, 2, E, D);
        snprintf(name, sizeof name, "decoder/proj/%d/bias", l);
        dreg(s, name, 1, E, 0);
    }
    dreg(s, "decoder/pred/weight", 2, K, E);
    dreg(s, "decoder/pred/bias", 1, K, 0);
    for (int i = 0; i < N; i++)
        dmlp_register(s, i);
    gd_backend *be = s->be;
    s->P = be->alloc(be, s->dfloats, err);
    s->G = s->P ? be->alloc(be, s->dfloats, err) : NULL;
    s->M = s->G ? be->alloc(be, s->dfloats, err) : NULL;
    s->V = s->M ? be->alloc(be, s->dfloats, err) : NULL;
    return s->V ? 0 : -1;
}

/* The DINO parameter table, from a throw-away trainer at the smallest
 * input (the table depends on the model only). */
static int build_backbone_table(seg_model *s, gd_err *err)
{
    int p = s->rc.model.patch, res[2] = {p, p};
    dino_trainer *t = dino_trainer_new(s->be, &s->rc.model, &s->rc.train, 1, 2, res, 0, err);
    if (!t)
        return -1;
    const dino_param *tab = dino_trainer_params(t, &s->nb);
    s->bfloats = dino_trainer_nfloats(t);
    s->btab = malloc(s->nb * sizeof *s->btab);
    s->bhost = calloc(s->bfloats ? s->bfloats : 1, sizeof(float));
    if (s->btab)
        memcpy(s->btab, tab, s->nb * sizeof *s->btab);
    dino_trainer_free(t);
    if (!s->btab || !s->bhost)
        return gd_errf(err, "out of memory");
    for (int i = 0; i < s->nb; i++) {
        if (!strcmp(s->btab[i].name, "backbone/norm/weight"))
            s->norm_w = s->btab[i].off;
        if (!strcmp(s->btab[i].name, "backbone/norm/bias"))
            s->norm_b = s->btab[i].off;
    }
    return 0;
}

static bool is_backbone(const dino_param *p) { return !strncmp(p->name, "backbone/", 9); }

/* The tensor `name` of m, f4 and of p's shape. */
static const tensor *require_param(const msg *m, const char *name, const dino_param *p,
                                   gd_err *err)
{
    const tensor *x = msg_require_tensor(m, name, DT_F4, p->ndim, err);
    for (int d = 0; x && d < p->ndim; d++)
        if (x->shape[d] != p->shape[d])
            return gd_errf(err, "tensor \"%s\": dimension %d is %lld, the model needs %lld", name,
                           d, (long long)x->shape[d], (long long)p->shape[d]), NULL;
    return x;
}

/* Reads every backbone tensor named prefix + path into s->bhost. */
static int read_backbone(seg_model *s, const msg *m, const char *prefix, gd_err *err)
{
    char name[160];
    for (int i = 0; i < s->nb; i++) {
        const dino_param *p = &s->btab[i];
        if (!is_backbone(p))
            continue;
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const tensor *x = require_param(m, name, p, err);
        if (!x)
            return -1;
        memcpy(s->bhost + p->off, x->data, p->n * sizeof(float));
    }
    return 0;
}

static seg_model *model_new(gd_backend *be, const seg_cfg *c, int batch, gd_err *err)
{
    if (c->emb_chans < 1 || c->num_classes < 1 || c->num_classes > SEG_MAX_CLASSES ||
        c->nlevels < 1 || c->nlevels > SEG_MAX_LEVELS)
        return gd_errf(err, "bad decoder configuration (emb_chans %d, %d classes, %d levels)",
                       c->emb_chans, c->num_classes, c->nlevels), NULL;
    if (c->head != SEG_HEAD_PLAIN && c->head != SEG_HEAD_DMLP)
        return gd_errf(err, "unknown decoder head %d", (int)c->head), NULL;
    if (c->head == SEG_HEAD_DMLP && (c->dmlp_blocks < 1 || c->dmlp_blocks > SEG_MAX_DMLP_BLOCKS))
        return gd_errf(err, "dmlp head: %d blocks, not in 1..%d", c->dmlp_blocks,
                       SEG_MAX_DMLP_BLOCKS), NULL;
    if (c->head == SEG_HEAD_DMLP && (!be->dwconv3_fwd || !be->dwconv3_bwd ||
                                     !be->deform_sample_fwd || !be->deform_sample_bwd))
        return gd_errf(err, "the %s backend has no deformable-MLP ops (--head dmlp needs the "
                            "cpu device)", be->name), NULL;
    seg_model *s = calloc(1, sizeof *s);
    if (!s)
        return gd_errf(err, "out of memory"), NULL;
    s->be = be;
    s->c = *c;
    s->B = batch < 2 ? 1 : (batch + 1) / 2;
    return s;
}

static int check_levels(const seg_model *s, gd_err *err)
{
    for (int l = 0; l < s->c.nlevels; l++)
        if (s->c.levels[l] < 1 || s->c.levels[l] > s->rc.model.depth)
            return gd_errf(err, "level %d is outside 1..%d (the backbone's depth)",
                           s->c.levels[l], s->rc.model.depth);
    return 0;
}

/* The constant a tensor starts at, or NAN for the uniform default: the
 * LayerNorms start as the identity, and the offset layer at zero so that a
 * fresh dmlp block samples each position itself with m = 1 (DCNv2's
 * practice). */
static float init_const(const char *name)
{
    const char *k = strstr(name, "/dmlp/") ? strrchr(name, '/') : NULL;
    if (!k)
        return NAN;
    if (strstr(name, "/ln1/") || strstr(name, "/ln2/"))
        return !strcmp(k, "/weight") ? 1.0f : 0.0f;
    if (strstr(name, "/offset/"))
        return 0.0f;
    return NAN;
}

/* torch.nn.Linear's (and Conv2d's) default: weight and bias uniform in
 * +-1/sqrt(fan_in); the exceptions of init_const. */
static int init_decoder(seg_model *s, uint64_t seed, gd_err *err)
{
    float *h = calloc(s->dfloats, sizeof *h);
    if (!h)
        return gd_errf(err, "out of memory");
    for (int i = 0; i < s->nd; i++) {
        const dino_param *p = &s->dtab[i];
        int64_t fan_in = p->ndim > 1 ? p->shape[1] : s->dtab[i - 1].shape[1];
        double bound = 1.0 / sqrt((double)fan_in);
        rng r;
        rng_init(&r, seed, 0x5e9, (uint64_t)i, 0); /* one stream per tensor */
        float v = init_const(p->name);
        for (size_t k = 0; k < p->n; k++)
            h[p->off + k] = isnan(v) ? (float)rng_range(&r, -bound, bound) : v;
    }
    int rc = s->be->upload(s->be, s->P, h, s->dfloats, err);
    free(h);
    return rc;
}

seg_model *seg_model_from_dino(gd_backend *be, const msg *ckpt, const seg_cfg *c, int batch,
                               uint64_t seed, gd_err *err)
{
    seg_model *s = model_new(be, c, batch, err);
    if (!s)
        return NULL;
    s->seed = seed;
    if (run_config_from_meta(&s->rc, &ckpt->meta, err) || check_levels(s, err) ||
        build_backbone_table(s, err) ||
        read_backbone(s, ckpt, dino_role_prefix(c->role), err) || build_decoder_table(s, err) ||
        init_decoder(s, seed, err)) {
        seg_model_free(s);
        return NULL;
    }
    return s;
}

static int cfg_from_meta(seg_cfg *c, const value *meta, gd_err *err)
{
    const value *seg = value_get(meta, "seg");
    const value *lv = seg ? value_get(seg, "levels") : NULL;
    if (!seg || seg->type != V_MAP || !lv || lv->type != V_ARRAY)
        return gd_errf(err, "meta \"seg\" (levels, emb_chans, num_classes) is missing");
    if (lv->u.c.n < 1 || lv->u.c.n > SEG_MAX_LEVELS)
        return gd_errf(err, "meta seg/levels: %zu levels", lv->u.c.n);
    c->nlevels = (int)lv->u.c.n;
    for (int l = 0; l < c->nlevels; l++) {
        if (lv->u.c.items[l].type != V_INT)
            return gd_errf(err, "meta seg/levels: not integers");
        c->levels[l] = (int)lv->u.c.items[l].u.i;
    }
    c->emb_chans = (int)value_int(seg, "emb_chans", 0);
    c->num_classes = (int)value_int(seg, "num_classes", 0);
    const char *which = value_str(seg, "which", "teacher");
    c->role = !strcmp(which, "student") ? DINO_STUDENT : DINO_TEACHER;
    if (seg_parse_head(value_str(seg, "head", "plain"), &c->head, err))
        return gd_err_prefix(err, "meta seg/head");
    c->dmlp_blocks = (int)value_int(seg, "dmlp_blocks", 0);
    return 0;
}

static int load_decoder(seg_model *s, const msg *m, gd_err *err)
{
    /* a head's tensors never load into another head */
    for (size_t i = 0; s->c.head != SEG_HEAD_DMLP && i < m->ntensors; i++)
        if (!strncmp(m->tensors[i].name, "decoder/dmlp/", 13))
            return gd_errf(err, "tensor \"%s\" belongs to a dmlp head, and meta seg/head says "
                                "this is a %s head", m->tensors[i].name,
                           seg_head_name(s->c.head));
    for (int i = 0; i < s->nd; i++) {
        const dino_param *p = &s->dtab[i];
        const tensor *x = require_param(m, p->name, p, err);
        if (!x || s->be->upload(s->be, s->P + p->off, x->data, p->n, err))
            return -1;
    }
    return 0;
}

seg_model *seg_model_load(gd_backend *be, const msg *m, int batch, gd_err *err)
{
    if (strcmp(m->kind, "segmodel"))
        return gd_errf(err, "a \"%s\" message, not a segmodel (train-source writes one)",
                       m->kind), NULL;
    seg_cfg c = {0};
    if (cfg_from_meta(&c, &m->meta, err))
        return NULL;
    seg_model *s = model_new(be, &c, batch, err);
    if (!s)
        return NULL;
    s->seed = (uint64_t)value_int(&m->meta, "seg/seed", 0);
    if (run_config_from_meta(&s->rc, &m->meta, err) || check_levels(s, err) ||
        build_backbone_table(s, err) || read_backbone(s, m, "", err) ||
        build_decoder_table(s, err) || load_decoder(s, m, err)) {
        seg_model_free(s);
        return NULL;
    }
    return s;
}

msg *seg_model_save(seg_model *s, long step, gd_err *err)
{
    if (sync_host(s, err))
        return NULL;
    msg *m = msg_new("segmodel");
    if (!m)
        return gd_errf(err, "out of memory"), NULL;
    for (int i = 0; i < s->nb; i++) {
        const dino_param *p = &s->btab[i];
        if (is_backbone(p) &&
            !msg_add_tensor_copy(m, p->name, DT_F4, p->ndim, p->shape, s->bhost + p->off))
            goto oom;
    }
    for (int i = 0; i < s->nd; i++) {
        const dino_param *p = &s->dtab[i];
        tensor *x = msg_add_tensor(m, p->name, DT_F4, p->ndim, p->shape);
        if (!x)
            goto oom;
        if (s->be->download(s->be, x->data, s->P + p->off, p->n, err))
            goto fail;
    }
    value *meta = &m->meta;
    if (!value_set_str(meta, "tool", "mpa-adapt") ||
        !value_set_str(meta, "version", GEODINO_VERSION))
        goto oom;
    if (run_config_to_meta(&s->rc, meta, err))
        goto fail;
    value *seg = value_set_map(meta, "seg");
    value lv = value_array();
    for (int l = 0; l < s->c.nlevels; l++)
        if (!value_push(&lv, (value){.type = V_INT, .u.i = s->c.levels[l]}))
            goto oom;
    if (!seg || !value_set(seg, "levels", lv) || !value_set_int(seg, "emb_chans", s->c.emb_chans) ||
        !value_set_int(seg, "num_classes", s->c.num_classes) ||
        !value_set_str(seg, "which", s->c.role == DINO_STUDENT ? "student" : "teacher") ||
        !value_set_int(seg, "ignore_index", SEG_IGNORE) || !value_set_int(seg, "step", step) ||
        !value_set_int(seg, "seed", (int64_t)s->seed) ||
        !value_set_str(seg, "backbone", s->finetune ? "fine-tuned" : "frozen") ||
        !value_set_str(seg, "head", seg_head_name(s->c.head)) ||
        !value_set_int(seg, "dmlp_blocks", s->c.head == SEG_HEAD_DMLP ? s->c.dmlp_blocks : 0))
        goto oom;
    return m;
oom:
    gd_errf(err, "out of memory");
fail:
    msg_free(m);
    return NULL;
}

static void ws_free(seg_model *s, seg_ws *w)
{
    gd_backend *be = s->be;
    dino_trainer_free(w->t);
    float **bufs[] = {&w->stage, &w->views, &w->fused, &w->logit_t, &w->logit, &w->dlogit,
                      &w->dlogit_t, &w->dfused, &w->dproto, &w->lab, &w->lab_t, &w->loss,
                      &w->protos, &w->cw, &w->sums, &w->counts};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        be->release(be, *bufs[i]);
    for (int l = 0; l < SEG_MAX_LEVELS; l++)
        be->release(be, w->tok[l]), be->release(be, w->nrm[l]), be->release(be, w->ln_m[l]),
            be->release(be, w->ln_r[l]), be->release(be, w->dtok[l]);
    be->release(be, w->dnrm);
    for (int i = 0; i < SEG_MAX_DMLP_BLOCKS; i++) {
        dmlp_acts *a = &w->blk[i];
        float *bufs2[] = {a->xin, a->h1, a->m1, a->r1, a->d, a->om, a->smp,
                          a->x1,  a->h2, a->m2, a->r2, a->z, a->u};
        for (size_t k = 0; k < sizeof bufs2 / sizeof bufs2[0]; k++)
            be->release(be, bufs2[k]);
    }
    float *scratch[] = {w->bx1, w->bs, w->bh, w->bh2, w->bz, w->bu, w->bom};
    for (size_t k = 0; k < sizeof scratch / sizeof scratch[0]; k++)
        be->release(be, scratch[k]);
}

void seg_model_free(seg_model *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nws; i++)
        ws_free(s, &s->ws[i]);
    gd_backend *be = s->be;
    be->release(be, s->P), be->release(be, s->G), be->release(be, s->M), be->release(be, s->V);
    run_config_free(&s->rc);
    free(s->btab), free(s->bhost), free(s->dtab), free(s->hbuf);
    free(s);
}

/* ---- workspaces ------------------------------------------------------------ */

static float *dalloc(seg_model *s, size_t n, int *failed, gd_err *err)
{
    if (*failed)
        return NULL;
    float *p = s->be->alloc(s->be, n, err);
    if (!p)
        *failed = 1;
    return p;
}

static int dmlp_alloc(seg_model *s, seg_ws *w, int R, gd_err *err)
{
    size_t E = (size_t)s->c.emb_chans, Hd = SEG_DMLP_MLP_RATIO * E;
    int failed = 0;
    for (int i = 0; i < s->c.dmlp_blocks; i++) {
        dmlp_acts *a = &w->blk[i];
        float **re[] = {&a->xin, &a->h1, &a->d, &a->smp, &a->x1, &a->h2};
        for (size_t k = 0; k < sizeof re / sizeof re[0]; k++)
            *re[k] = dalloc(s, R * E, &failed, err);
        float **rows[] = {&a->m1, &a->r1, &a->m2, &a->r2};
        for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++)
            *rows[k] = dalloc(s, R, &failed, err);
        a->om = dalloc(s, (size_t)R * 3, &failed, err);
        a->z = dalloc(s, R * Hd, &failed, err);
        a->u = dalloc(s, R * Hd, &failed, err);
    }
    float **re[] = {&w->bx1, &w->bs, &w->bh, &w->bh2};
    for (size_t k = 0; k < sizeof re / sizeof re[0]; k++)
        *re[k] = dalloc(s, R * E, &failed, err);
    w->bz = dalloc(s, R * Hd, &failed, err);
    w->bu = dalloc(s, R * Hd, &failed, err);
    w->bom = dalloc(s, (size_t)R * 3, &failed, err);
    return failed ? -1 : 0;
}

static int ws_alloc(seg_model *s, seg_ws *w, gd_err *err)
{
    const dino_model_cfg *m = &s->rc.model;
    int R = 2 * s->B * w->np, D = m->embed_dim, E = s->c.emb_chans, K = s->c.num_classes;
    size_t P = (size_t)2 * s->B * w->S * w->S;
    int failed = 0;
    w->views = dalloc(s, P * m->in_chans, &failed, err);
    for (int l = 0; l < s->c.nlevels; l++) {
        w->tok[l] = dalloc(s, (size_t)R * D, &failed, err);
        w->nrm[l] = dalloc(s, (size_t)R * D, &failed, err);
        w->ln_m[l] = dalloc(s, R, &failed, err);
        w->ln_r[l] = dalloc(s, R, &failed, err);
        w->dtok[l] = dalloc(s, (size_t)R * D, &failed, err);
    }
    w->dnrm = dalloc(s, (size_t)R * D, &failed, err);
    w->fused = dalloc(s, (size_t)R * E, &failed, err);
    w->dfused = dalloc(s, (size_t)R * E, &failed, err);
    w->dproto = dalloc(s, (size_t)R * E, &failed, err);
    w->logit_t = dalloc(s, (size_t)R * K, &failed, err);
    w->dlogit_t = dalloc(s, (size_t)R * K, &failed, err);
    w->logit = dalloc(s, P * K, &failed, err);
    w->dlogit = dalloc(s, P * K, &failed, err);
    w->lab = dalloc(s, P, &failed, err);
    w->lab_t = dalloc(s, R, &failed, err);
    w->loss = dalloc(s, 2, &failed, err);
    w->protos = dalloc(s, (size_t)K * E, &failed, err);
    w->cw = dalloc(s, K, &failed, err);
    w->sums = dalloc(s, (size_t)K * E, &failed, err);
    w->counts = dalloc(s, K, &failed, err);
    if (!failed && s->c.head == SEG_HEAD_DMLP && dmlp_alloc(s, w, R, err))
        failed = 1;
    return failed ? -1 : 0;
}

/* The workspace for tiles of size S (made on first use). */
static seg_ws *ws_get(seg_model *s, int S, gd_err *err)
{
    for (int i = 0; i < s->nws; i++)
        if (s->ws[i].S == S)
            return &s->ws[i];
    int p = s->rc.model.patch;
    if (S < p || S % p)
        return gd_errf(err, "tile size %d is not a multiple of the patch (%d)", S, p), NULL;
    if (s->nws == MAX_SIZES)
        return gd_errf(err, "more than %d tile sizes in one run", MAX_SIZES), NULL;
    seg_ws *w = &s->ws[s->nws];
    memset(w, 0, sizeof *w);
    w->S = S, w->g = S / p, w->np = w->g * w->g;
    int res[2] = {S, S};
    w->t = dino_trainer_new(s->be, &s->rc.model, &s->rc.train, s->B, 2, res, s->seed, err);
    if (!w->t)
        return NULL;
    s->nws++;
    w->ver = -1; /* its backbone is uploaded by the first forward */
    if (ws_alloc(s, w, err))
        return NULL;
    return w;
}

/* bhost gets the newest backbone (fine-tuning changes it in one trainer). */
static int sync_host(seg_model *s, gd_err *err)
{
    if (s->host_ver == s->ver)
        return 0;
    seg_ws *o = &s->ws[s->train_ws];
    if (s->be->download(s->be, s->bhost, dino_trainer_buffer(o->t, s->c.role), s->bfloats, err))
        return -1;
    s->host_ver = s->ver;
    return 0;
}

/* The workspace's trainer gets the newest backbone. */
static int sync_ws(seg_model *s, seg_ws *w, gd_err *err)
{
    if (w->ver == s->ver)
        return 0;
    if (sync_host(s, err) ||
        s->be->upload(s->be, dino_trainer_buffer(w->t, s->c.role), s->bhost, s->bfloats, err))
        return -1;
    w->ver = s->ver;
    return 0;
}

static float *host_scratch(seg_model *s, size_t n, gd_err *err)
{
    if (n > s->hbuf_n) {
        float *p = realloc(s->hbuf, n * sizeof *p);
        if (!p)
            return gd_errf(err, "out of memory"), NULL;
        s->hbuf = p, s->hbuf_n = n;
    }
    return s->hbuf;
}

/* ---- passes ---------------------------------------------------------------- */

static void linear_acc(gd_backend *be, float *y, const float *x, const float *w, const float *b,
                       int M, int in, int out, float beta)
{
    be->gemm(be, false, true, M, out, in, 1.0f, x, in, 0, w, in, 0, beta, y, out, 0, 1);
    be->bias_add(be, y, b, M, out);
}

static const float *dparam(const seg_model *s, const float *buf, int i)
{
    return buf + s->dtab[i].off;
}

/* Parameter k of dmlp block i in buf (P or G). */
static float *dmp(const seg_model *s, float *buf, int i, int k)
{
    return buf + s->dtab[2 * s->c.nlevels + 2 + DM_NT * i + k].off;
}

/* dmlp block i of the workspace's maps, from blk[i].xin into out. */
static void dmlp_forward(seg_model *s, seg_ws *w, int i, float *out)
{
    gd_backend *be = s->be;
    dmlp_acts *a = &w->blk[i];
    int E = s->c.emb_chans, Hd = SEG_DMLP_MLP_RATIO * E, R = 2 * s->B * w->np, M = 2 * s->B;
    float *P = s->P;
    be->layernorm_fwd(be, a->h1, a->m1, a->r1, a->xin, dmp(s, P, i, DM_LN1W),
                      dmp(s, P, i, DM_LN1B), R, E, DMLP_LN_EPS);
    be->dwconv3_fwd(be, a->d, a->h1, dmp(s, P, i, DM_DWW), dmp(s, P, i, DM_DWB), M, w->g, w->g,
                    E);
    linear_acc(be, a->om, a->d, dmp(s, P, i, DM_OFFW), dmp(s, P, i, DM_OFFB), R, E, 3, 0.0f);
    be->deform_sample_fwd(be, a->smp, a->h1, a->om, M, w->g, w->g, E, w->g / 4.0f);
    linear_acc(be, a->x1, a->smp, dmp(s, P, i, DM_FCW), dmp(s, P, i, DM_FCB), R, E, E, 0.0f);
    be->axpy(be, a->x1, 1.0f, a->xin, (size_t)R * E);
    be->layernorm_fwd(be, a->h2, a->m2, a->r2, a->x1, dmp(s, P, i, DM_LN2W),
                      dmp(s, P, i, DM_LN2B), R, E, DMLP_LN_EPS);
    linear_acc(be, a->z, a->h2, dmp(s, P, i, DM_FC1W), dmp(s, P, i, DM_FC1B), R, E, Hd, 0.0f);
    be->gelu_fwd(be, a->u, a->z, (size_t)R * Hd);
    linear_acc(be, out, a->u, dmp(s, P, i, DM_FC2W), dmp(s, P, i, DM_FC2B), R, Hd, E, 0.0f);
    be->axpy(be, out, 1.0f, a->x1, (size_t)R * E);
}

/* y = x W^T + b backward: dW += dy^T x, db += sum dy, dx = dy W (overwrite). */
static void linear_bwd(gd_backend *be, float *dx, float *dw, float *db, const float *dy,
                       const float *x, const float *wt, int M, int in, int out)
{
    be->gemm(be, true, false, out, in, M, 1.0f, dy, out, 0, x, in, 0, 1.0f, dw, in, 0, 1);
    be->bias_grad(be, db, dy, M, out);
    be->gemm(be, false, false, M, in, out, 1.0f, dy, out, 0, wt, in, 0, 0.0f, dx, in, 0, 1);
}

/* Block i backward: d (in place) holds the gradient w.r.t. its output and
 * gets the one w.r.t. its input; parameter gradients add to G. */
static void dmlp_backward(seg_model *s, seg_ws *w, int i, float *d)
{
    gd_backend *be = s->be;
    dmlp_acts *a = &w->blk[i];
    int E = s->c.emb_chans, Hd = SEG_DMLP_MLP_RATIO * E, R = 2 * s->B * w->np, M = 2 * s->B;
    size_t RE = (size_t)R * E;
    float *P = s->P, *G = s->G;
    /* y = x1 + fc2(GELU(fc1(LN2(x1)))) */
    linear_bwd(be, w->bu, dmp(s, G, i, DM_FC2W), dmp(s, G, i, DM_FC2B), d, a->u,
               dmp(s, P, i, DM_FC2W), R, Hd, E);
    be->gelu_bwd(be, w->bz, a->z, w->bu, (size_t)R * Hd);
    linear_bwd(be, w->bh, dmp(s, G, i, DM_FC1W), dmp(s, G, i, DM_FC1B), w->bz, a->h2,
               dmp(s, P, i, DM_FC1W), R, E, Hd);
    be->copy(be, w->bx1, d, RE);
    be->layernorm_bwd(be, w->bx1, dmp(s, G, i, DM_LN2W), dmp(s, G, i, DM_LN2B), w->bh, a->x1,
                      dmp(s, P, i, DM_LN2W), a->m2, a->r2, R, E);
    /* x1 = x + fc(sample(h1, offset(dwconv(h1)))) */
    linear_bwd(be, w->bs, dmp(s, G, i, DM_FCW), dmp(s, G, i, DM_FCB), w->bx1, a->smp,
               dmp(s, P, i, DM_FCW), R, E, E);
    be->deform_sample_bwd(be, w->bh, w->bom, w->bs, a->h1, a->om, M, w->g, w->g, E,
                          w->g / 4.0f);
    linear_bwd(be, w->bs, dmp(s, G, i, DM_OFFW), dmp(s, G, i, DM_OFFB), w->bom, a->d,
               dmp(s, P, i, DM_OFFW), R, E, 3);
    be->dwconv3_bwd(be, w->bh2, dmp(s, G, i, DM_DWW), dmp(s, G, i, DM_DWB), w->bs, a->h1,
                    dmp(s, P, i, DM_DWW), M, w->g, w->g, E);
    be->axpy(be, w->bh, 1.0f, w->bh2, RE);
    be->copy(be, d, w->bx1, RE);
    be->layernorm_bwd(be, d, dmp(s, G, i, DM_LN1W), dmp(s, G, i, DM_LN1B), w->bh, a->xin,
                      dmp(s, P, i, DM_LN1W), a->m1, a->r1, R, E);
}

/* Forward of n tiles [n, C, S, S] (host) at size S2: logits [2B, S2, S2, K]. */
static seg_ws *forward(seg_model *s, const float *img, int n, int S, int S2, gd_err *err)
{
    gd_backend *be = s->be;
    if (n < 1 || n > 2 * s->B)
        return gd_errf(err, "%d tiles in a pass of at most %d", n, 2 * s->B), NULL;
    seg_ws *w = ws_get(s, S2, err);
    if (!w || sync_ws(s, w, err))
        return NULL;
    const dino_model_cfg *m = &s->rc.model;
    int C = m->in_chans, D = m->embed_dim, E = s->c.emb_chans, K = s->c.num_classes;
    int L = s->c.nlevels;
    int R = 2 * s->B * w->np;
    size_t img2 = (size_t)C * S2 * S2;
    be->fill(be, w->views, 0, 2 * s->B * img2);
    if (S2 == S) {
        if (be->upload(be, w->views, img, n * img2, err))
            return NULL;
    } else {
        size_t need = (size_t)n * C * S * S;
        if (need > w->stage_n) {
            be->release(be, w->stage);
            w->stage_n = 0;
            if (!(w->stage = be->alloc(be, need, err)))
                return NULL;
            w->stage_n = need;
        }
        if (be->upload(be, w->stage, img, need, err))
            return NULL;
        be->bilinear_fwd(be, w->views, w->stage, n * C, S, S, S2, S2, 1);
    }
    float *vp[2] = {w->views, w->views + (size_t)s->B * img2};
    if (dino_trainer_tokens(w->t, s->c.role, vp, s->c.levels, L, w->tok, err))
        return NULL;
    const float *bb = dino_trainer_buffer(w->t, s->c.role);
    int N = s->c.head == SEG_HEAD_DMLP ? s->c.dmlp_blocks : 0;
    float *sum = N ? w->blk[0].xin : w->fused;
    for (int l = 0; l < L; l++) {
        be->layernorm_fwd(be, w->nrm[l], w->ln_m[l], w->ln_r[l], w->tok[l], bb + s->norm_w,
                          bb + s->norm_b, R, D, m->ln_eps);
        linear_acc(be, sum, w->nrm[l], dparam(s, s->P, 2 * l), dparam(s, s->P, 2 * l + 1), R, D,
                   E, l ? 1.0f : 0.0f);
    }
    for (int i = 0; i < N; i++)
        dmlp_forward(s, w, i, i + 1 < N ? w->blk[i + 1].xin : w->fused);
    linear_acc(be, w->logit_t, w->fused, dparam(s, s->P, 2 * L), dparam(s, s->P, 2 * L + 1), R, E,
               K, 0.0f);
    be->bilinear_fwd(be, w->logit, w->logit_t, 2 * s->B, w->g, w->g, S2, S2, K);
    w->nvalid = n;
    return w;
}

/* Decoder gradients from dlogit (and dproto when proto): added to G. */
static void backward(seg_model *s, seg_ws *w, bool proto)
{
    gd_backend *be = s->be;
    int D = s->rc.model.embed_dim, E = s->c.emb_chans, K = s->c.num_classes, L = s->c.nlevels;
    int R = 2 * s->B * w->np;
    float *G = s->G;
    be->bilinear_bwd(be, w->dlogit_t, w->dlogit, 2 * s->B, w->g, w->g, w->S, w->S, K);
    be->gemm(be, true, false, K, E, R, 1.0f, w->dlogit_t, K, 0, w->fused, E, 0, 1.0f,
             G + s->dtab[2 * L].off, E, 0, 1);
    be->bias_grad(be, G + s->dtab[2 * L + 1].off, w->dlogit_t, R, K);
    be->gemm(be, false, false, R, E, K, 1.0f, w->dlogit_t, K, 0, dparam(s, s->P, 2 * L), E, 0, 0.0f,
             w->dfused, E, 0, 1);
    if (proto)
        be->axpy(be, w->dfused, 1.0f, w->dproto, (size_t)R * E);
    for (int i = (s->c.head == SEG_HEAD_DMLP ? s->c.dmlp_blocks : 0) - 1; i >= 0; i--)
        dmlp_backward(s, w, i, w->dfused); /* dfused becomes d(level sum) */
    for (int l = 0; l < L; l++) {
        be->gemm(be, true, false, E, D, R, 1.0f, w->dfused, E, 0, w->nrm[l], D, 0, 1.0f,
                 G + s->dtab[2 * l].off, D, 0, 1);
        be->bias_grad(be, G + s->dtab[2 * l + 1].off, w->dfused, R, E);
    }
}

/* Into the backbone: each level's gradient through its projection and the
 * final LayerNorm, then dino_trainer_tokens_bwd. */
static int backward_backbone(seg_model *s, seg_ws *w, gd_err *err)
{
    gd_backend *be = s->be;
    const dino_model_cfg *m = &s->rc.model;
    int D = m->embed_dim, E = s->c.emb_chans, L = s->c.nlevels, R = 2 * s->B * w->np;
    if (s->ver > 0 && w != &s->ws[s->train_ws])
        return gd_errf(err, "fine-tuning trains at one tile size (%d, here %d)",
                       s->ws[s->train_ws].S, w->S);
    s->train_ws = (int)(w - s->ws);
    const float *bb = dino_trainer_buffer(w->t, s->c.role);
    float *gb = dino_trainer_buffer(w->t, DINO_GRAD);
    for (int l = 0; l < L; l++) {
        be->gemm(be, false, false, R, D, E, 1.0f, w->dfused, E, 0, dparam(s, s->P, 2 * l), D, 0,
                 0.0f, w->dnrm, D, 0, 1);
        be->fill(be, w->dtok[l], 0, (size_t)R * D); /* layernorm_bwd accumulates */
        be->layernorm_bwd(be, w->dtok[l], gb + s->norm_w, gb + s->norm_b, w->dnrm, w->tok[l],
                          bb + s->norm_w, w->ln_m[l], w->ln_r[l], R, D);
    }
    return dino_trainer_tokens_bwd(w->t, s->c.role, s->c.levels, L, w->dtok, err);
}

void seg_labels_to_grid(const uint8_t *lab, int S, int patch, uint8_t *out)
{
    int g = S / patch, c = patch / 2;
    for (int y = 0; y < g; y++)
        for (int x = 0; x < g; x++)
            out[y * g + x] = lab[(size_t)(y * patch + c) * S + x * patch + c];
}

/* Labels of n tiles as floats for the device, padding tiles ignored. */
static int upload_labels(seg_model *s, float *dst, const uint8_t *lab, int n, size_t per,
                         size_t total, gd_err *err)
{
    float *h = host_scratch(s, total, err);
    if (!h)
        return -1;
    for (size_t i = 0; i < total; i++)
        h[i] = i < (size_t)n * per ? (float)lab[i] : (float)SEG_IGNORE;
    return s->be->upload(s->be, dst, h, total, err);
}

int seg_argmax(const float *p, int K)
{
    int best = 0;
    for (int k = 1; k < K; k++)
        if (p[k] > p[best])
            best = k;
    return best;
}

/* Token-grid labels of n tiles (centre pixels) into tok [n * np]; where
 * agree, tokens whose prediction differs become ignore. */
static int grid_labels(seg_model *s, seg_ws *w, const uint8_t *lab, int n, bool agree,
                       uint8_t *tok, gd_err *err)
{
    int p = s->rc.model.patch, K = s->c.num_classes;
    for (int i = 0; i < n; i++)
        seg_labels_to_grid(lab + (size_t)i * w->S * w->S, w->S, p, tok + (size_t)i * w->np);
    if (!agree)
        return 0;
    size_t nt = (size_t)n * w->np;
    float *lt = malloc(nt * K * sizeof *lt);
    if (!lt)
        return gd_errf(err, "out of memory");
    if (s->be->download(s->be, lt, w->logit_t, nt * K, err)) {
        free(lt);
        return -1;
    }
    for (size_t i = 0; i < nt; i++)
        if (tok[i] != SEG_IGNORE && seg_argmax(lt + i * K, K) != tok[i])
            tok[i] = SEG_IGNORE;
    free(lt);
    return 0;
}

static int agree_stats(seg_model *s, seg_ws *w, const uint8_t *lab, int n, const seg_loss_opts *o,
                       gd_err *err)
{
    gd_backend *be = s->be;
    int E = s->c.emb_chans, K = s->c.num_classes;
    size_t nt = (size_t)n * w->np;
    uint8_t *tok = malloc(nt);
    float *h = malloc(((size_t)K * E + K) * sizeof *h);
    int rc = -1;
    if (!tok || !h) {
        gd_errf(err, "out of memory");
        goto done;
    }
    if (grid_labels(s, w, lab, n, true, tok, err) ||
        upload_labels(s, w->lab_t, tok, n, w->np, nt, err))
        goto done;
    be->fill(be, w->sums, 0, (size_t)K * E);
    be->fill(be, w->counts, 0, K);
    be->class_sums(be, w->sums, w->counts, w->fused, w->lab_t, (int)nt, E, K);
    if (be->download(be, h, w->sums, (size_t)K * E, err) ||
        be->download(be, h + (size_t)K * E, w->counts, K, err))
        goto done;
    for (int k = 0; k < K * E; k++)
        o->agree_sums[k] += h[k];
    for (int k = 0; k < K; k++)
        o->agree_counts[k] += h[K * E + k];
    rc = 0;
done:
    free(tok), free(h);
    return rc;
}

int seg_batch_loss(seg_model *s, const float *img, const uint8_t *lab, int n, int S,
                   const seg_loss_opts *o, bool grads, seg_losses *out, gd_err *err)
{
    gd_backend *be = s->be;
    seg_ws *w = forward(s, img, n, S, S, err);
    if (!w)
        return -1;
    int E = s->c.emb_chans, K = s->c.num_classes, R = 2 * s->B * w->np;
    size_t P = (size_t)2 * s->B * S * S;
    float l[2];
    *out = (seg_losses){0};
    if (o->agree_sums && agree_stats(s, w, lab, n, o, err))
        return -1;
    if (upload_labels(s, w->lab, lab, n, (size_t)S * S, P, err))
        return -1;
    if (o->class_weights && be->upload(be, w->cw, o->class_weights, K, err))
        return -1;
    be->seg_ce(be, w->loss, grads ? w->dlogit : NULL, w->logit, w->lab,
               o->class_weights ? w->cw : NULL, (int)P, K, (float)o->weight);
    if (be->download(be, l, w->loss, 2, err))
        return -1;
    out->ce = l[0], out->ce_pixels = l[1];
    bool proto = o->protos && o->lambda_proto > 0;
    if (proto) {
        uint8_t *tok = malloc((size_t)n * w->np);
        if (!tok)
            return gd_errf(err, "out of memory");
        grid_labels(s, w, lab, n, false, tok, err);
        int rc = upload_labels(s, w->lab_t, tok, n, w->np, R, err);
        free(tok);
        if (rc || be->upload(be, w->protos, o->protos, (size_t)K * E, err))
            return -1;
        be->proto_loss(be, w->loss, grads ? w->dproto : NULL, w->fused, w->protos, w->lab_t, R, E,
                       K, (float)o->temp, (float)o->alpha,
                       (float)(o->weight * o->lambda_proto));
        if (be->download(be, l, w->loss, 2, err))
            return -1;
        out->proto = l[0], out->proto_tokens = l[1];
    }
    if (!isfinite(out->ce) || !isfinite(out->proto))
        return gd_errf(err, "the loss is not finite (ce %g, proto %g)", out->ce, out->proto);
    if (grads) {
        backward(s, w, proto);
        if (s->finetune && backward_backbone(s, w, err))
            return -1;
    }
    return be->sync(be, err);
}

int seg_predict(seg_model *s, const float *img, int n, int S, int S2, float *probs, gd_err *err)
{
    gd_backend *be = s->be;
    seg_ws *w = forward(s, img, n, S, S2, err);
    if (!w)
        return -1;
    int K = s->c.num_classes;
    size_t P2 = (size_t)2 * s->B * S2 * S2;
    be->softmax_fwd(be, w->dlogit, w->logit, 1.0f, (int)P2, K);
    const float *src = w->dlogit;
    if (S2 != S) {
        /* back to S x S, into the gradient buffer of the S workspace */
        seg_ws *w0 = ws_get(s, S, err);
        if (!w0)
            return -1;
        be->bilinear_fwd(be, w0->dlogit, w->dlogit, n, S2, S2, S, S, K);
        src = w0->dlogit;
    }
    if (be->download(be, probs, src, (size_t)n * S * S * K, err))
        return -1;
    return be->sync(be, err);
}

int seg_token_outputs(seg_model *s, int n, int S, float *fused, uint8_t *pred, gd_err *err)
{
    seg_ws *w = ws_get(s, S, err);
    if (!w)
        return -1;
    if (n > w->nvalid)
        return gd_errf(err, "token outputs: %d tiles asked, the last pass had %d", n, w->nvalid);
    int E = s->c.emb_chans, K = s->c.num_classes;
    size_t nt = (size_t)n * w->np;
    if (fused && s->be->download(s->be, fused, w->fused, nt * E, err))
        return -1;
    if (pred) {
        float *lt = host_scratch(s, nt * K, err);
        if (!lt || s->be->download(s->be, lt, w->logit_t, nt * K, err))
            return -1;
        for (size_t i = 0; i < nt; i++)
            pred[i] = (uint8_t)seg_argmax(lt + i * K, K);
    }
    return s->be->sync(s->be, err);
}

int seg_class_sums(seg_model *s, int i, int S, const uint8_t *tok, float *sums, float *counts,
                   gd_err *err)
{
    gd_backend *be = s->be;
    seg_ws *w = ws_get(s, S, err);
    if (!w)
        return -1;
    if (i < 0 || i >= w->nvalid)
        return gd_errf(err, "class sums: tile %d of a pass of %d", i, w->nvalid);
    int E = s->c.emb_chans, K = s->c.num_classes;
    if (upload_labels(s, w->lab_t, tok, 1, w->np, w->np, err))
        return -1;
    be->fill(be, w->sums, 0, (size_t)K * E);
    be->fill(be, w->counts, 0, K);
    be->class_sums(be, w->sums, w->counts, w->fused + (size_t)i * w->np * E, w->lab_t, w->np, E,
                   K);
    if (be->download(be, sums, w->sums, (size_t)K * E, err) ||
        be->download(be, counts, w->counts, K, err))
        return -1;
    return be->sync(be, err);
}

/* ---- optimisation ------------------------------------------------------------ */

void seg_zero_grad(seg_model *s)
{
    s->be->fill(s->be, s->G, 0, s->dfloats);
    if (s->finetune)
        for (int i = 0; i < s->nws; i++)
            s->be->fill(s->be, dino_trainer_buffer(s->ws[i].t, DINO_GRAD), 0, s->bfloats);
}

void seg_model_set_finetune(seg_model *s, bool on, double backbone_lr_mult)
{
    s->finetune = on;
    s->backbone_lr_mult = backbone_lr_mult;
}

double seg_poly_lr(double base, long it, long total)
{
    if (total <= 0 || it >= total)
        return 0;
    return base * pow(1.0 - (double)it / total, 0.9);
}

/* One tensor: AdamW, or torch.optim.SGD (g += wd x; m = mu m + g; x -= lr m) */
static void opt_tensor(gd_backend *be, seg_optim opt, float *x, float *g, float *m, float *v,
                       size_t n, double lr, double wd, double momentum, long step)
{
    if (opt == SEG_ADAMW) {
        be->adamw(be, x, g, m, v, n, (float)lr, (float)wd, 0.9f, 0.999f, 1e-8f, (int)step);
        return;
    }
    if (wd > 0)
        be->axpy(be, g, (float)wd, x, n);
    be->scale(be, m, (float)momentum, n);
    be->axpy(be, m, 1.0f, g, n);
    be->axpy(be, x, (float)-lr, m, n);
}

int seg_step(seg_model *s, seg_optim opt, double lr, double wd, double momentum, gd_err *err)
{
    gd_backend *be = s->be;
    s->opt_steps++;
    for (int i = 0; i < s->nd; i++) {
        const dino_param *p = &s->dtab[i];
        opt_tensor(be, opt, s->P + p->off, s->G + p->off, s->M + p->off, s->V + p->off, p->n, lr,
                   p->decay ? wd : 0, momentum, s->opt_steps);
    }
    if (s->finetune && s->nws) {
        seg_ws *w = &s->ws[s->train_ws];
        float *x = dino_trainer_buffer(w->t, s->c.role), *g = dino_trainer_buffer(w->t, DINO_GRAD);
        float *m = dino_trainer_buffer(w->t, DINO_ADAM_M);
        float *v = dino_trainer_buffer(w->t, DINO_ADAM_V);
        for (int i = 0; i < s->nb; i++) {
            const dino_param *p = &s->btab[i];
            if (!is_backbone(p))
                continue;
            size_t o = p->off;
            opt_tensor(be, opt, x + o, g + o, m + o, v + o, p->n, lr * s->backbone_lr_mult,
                       p->decay ? wd : 0, momentum, s->opt_steps);
        }
        w->ver = ++s->ver; /* the other workspaces and bhost are now stale */
    }
    return be->sync(be, err);
}

int seg_backbone_tensor(seg_model *s, int S, const char *name, float **param, float **grad,
                        size_t *n, gd_err *err)
{
    seg_ws *w = ws_get(s, S, err);
    if (!w)
        return -1;
    for (int i = 0; i < s->nb; i++)
        if (!strcmp(s->btab[i].name, name)) {
            *param = dino_trainer_buffer(w->t, s->c.role) + s->btab[i].off;
            *grad = dino_trainer_buffer(w->t, DINO_GRAD) + s->btab[i].off;
            *n = s->btab[i].n;
            return 0;
        }
    return gd_errf(err, "no backbone tensor \"%s\"", name);
}

/* ---- data ------------------------------------------------------------------------ */

static int set_reserve(seg_set *s, int C, int S, gd_err *err)
{
    if (s->n == 0 && s->cap == 0)
        s->C = C, s->S = S;
    if (C != s->C || S != s->S)
        return gd_errf(err, "%dx%d with %d bands; the first tile was %dx%d with %d (tiles must "
                            "agree)", S, S, C, s->S, s->S, s->C);
    if (s->n < s->cap)
        return 0;
    size_t cap = s->cap ? 2 * s->cap : 16, img = (size_t)C * S * S, px = (size_t)S * S;
    float *im = realloc(s->img, cap * img * sizeof *im);
    if (im)
        s->img = im;
    uint8_t *lb = realloc(s->lab, cap * px);
    if (lb)
        s->lab = lb;
    char **nm = realloc(s->names, cap * sizeof *nm);
    if (nm)
        s->names = nm;
    if (!im || !lb || !nm)
        return gd_errf(err, "out of memory for %zu tiles", cap);
    s->cap = cap;
    return 0;
}

/* Raw values [C, S, S] -> normalized, as dino-step embed does. */
static int normalize(const run_config *rc, float *x, const uint8_t *valid, int C, size_t npix,
                     gd_err *err)
{
    float mean[4096] = {0};
    if (C > 4096)
        return gd_errf(err, "%d bands, at most 4096", C);
    for (int b = 0; b < C; b++)
        mean[b] = (float)rc->mean[b];
    mc_prepare(x, valid, C, npix, rc->stats_scale, mean);
    for (int b = 0; b < C; b++)
        for (size_t i = 0; i < npix; i++)
            x[(size_t)b * npix + i] = (float)((x[(size_t)b * npix + i] - mean[b]) / rc->std[b]);
    return 0;
}

/* Before anything is allocated for a tile: its bands and size. */
static int check_tile(const run_config *rc, int C, int h, int w, gd_err *err)
{
    if (!rc->nstats)
        return gd_errf(err, "the checkpoint holds no stats (dino-step init --stats)");
    if (C != rc->nstats || C != rc->model.in_chans)
        return gd_errf(err, "%d bands, the model has %d", C, rc->model.in_chans);
    int p = rc->model.patch;
    if (h != w || h < p || h % p)
        return gd_errf(err, "%dx%d: tiles must be square, a multiple of the patch (%d)", w, h, p);
    return 0;
}

/* Class ids from label values: integers in [0, K) or the ignore index. */
static int check_labels(const float *v, size_t n, int K, uint8_t *out, gd_err *err)
{
    for (size_t i = 0; i < n; i++) {
        float x = v[i];
        if (x == SEG_IGNORE) {
            out[i] = SEG_IGNORE;
            continue;
        }
        if (!(x >= 0 && x < K && x == floorf(x)))
            return gd_errf(err, "label %g at pixel %zu is not a class in 0..%d or %d (ignore)",
                           x, i, K - 1, SEG_IGNORE);
        out[i] = (uint8_t)x;
    }
    return 0;
}

static int add_tile(seg_set *s, const run_config *rc, const char *image, const char *label,
                    bool labels, int K, gd_err *err)
{
    raster r, lr;
    memset(&lr, 0, sizeof lr);
    if (raster_read(image, NULL, &r, err))
        return -1;
    int rc_ = 0, S = r.height;
    size_t npix = (size_t)r.height * r.width;
    if (check_tile(rc, r.bands, r.height, r.width, err) || set_reserve(s, r.bands, S, err) ||
        normalize(rc, r.data, r.valid, r.bands, npix, err)) {
        rc_ = gd_err_prefix(err, "%s", image);
        goto done;
    }
    uint8_t *lab = s->lab + s->n * npix;
    if (labels && label) {
        if (raster_read(label, NULL, &lr, err)) {
            rc_ = -1;
            goto done;
        }
        if (lr.bands != 1 || lr.height != r.height || lr.width != r.width) {
            rc_ = gd_errf(err, "%s: %d bands of %dx%d, the image %s needs 1 of %dx%d", label,
                          lr.bands, lr.width, lr.height, image, r.width, r.height);
            goto done;
        }
        if (check_labels(lr.data, npix, K, lab, err)) {
            rc_ = gd_err_prefix(err, "%s", label);
            goto done;
        }
    } else if (labels) {
        rc_ = gd_errf(err, "%s: no label raster (lines are \"image label\")", image);
        goto done;
    } else {
        memset(lab, SEG_IGNORE, npix);
    }
    memcpy(s->img + s->n * (size_t)r.bands * npix, r.data, (size_t)r.bands * npix * sizeof(float));
    if (!(s->names[s->n] = strdup(image))) {
        rc_ = gd_errf(err, "out of memory");
        goto done;
    }
    s->n++;
done:
    raster_free(&r);
    raster_free(&lr);
    return rc_;
}

int seg_set_add_list(seg_set *s, const run_config *rc, const char *list, bool labels, int K,
                     gd_err *err)
{
    char **lines = NULL;
    size_t n = 0;
    if (read_lines(list, &lines, &n, err))
        return -1;
    int rc_ = 0;
    for (size_t i = 0; i < n && !rc_; i++) {
        char *a = lines[i], *b = a;
        while (*b && !isspace((unsigned char)*b))
            b++;
        char *label = NULL;
        if (*b) {
            *b++ = 0;
            while (isspace((unsigned char)*b))
                b++;
            label = *b ? b : NULL;
        }
        if (add_tile(s, rc, a, label, labels, K, err))
            rc_ = gd_err_prefix(err, "%s: line %zu", list, i + 1);
    }
    free_lines(lines, n);
    return rc_;
}

static int add_sample(seg_set *s, const run_config *rc, const msg *m, const char *name, int K,
                      gd_err *err)
{
    if (strcmp(m->kind, "sample"))
        return gd_errf(err, "a \"%s\" message, not a sample", m->kind);
    const tensor *im = msg_require_tensor(m, "image", DT_F4, 3, err);
    const tensor *lb = im ? msg_require_tensor(m, "label", DT_U1, 2, err) : NULL;
    if (!lb)
        return -1;
    int C = (int)im->shape[0], H = (int)im->shape[1], W = (int)im->shape[2];
    if (lb->shape[0] != H || lb->shape[1] != W)
        return gd_errf(err, "label is %lldx%lld, the image %dx%d", (long long)lb->shape[1],
                       (long long)lb->shape[0], W, H);
    size_t npix = (size_t)H * W;
    if (check_tile(rc, C, H, W, err) || set_reserve(s, C, H, err))
        return -1;
    float *x = s->img + s->n * (size_t)C * npix;
    memcpy(x, im->data, (size_t)C * npix * sizeof(float));
    if (normalize(rc, x, NULL, C, npix, err))
        return -1;
    uint8_t *lab = s->lab + s->n * npix;
    const uint8_t *src = lb->data;
    for (size_t i = 0; i < npix; i++) {
        if (src[i] != SEG_IGNORE && src[i] >= K)
            return gd_errf(err, "label %d at pixel %zu is not a class in 0..%d or %d", src[i], i,
                           K - 1, SEG_IGNORE);
        lab[i] = src[i];
    }
    if (!(s->names[s->n] = strdup(name)))
        return gd_errf(err, "out of memory");
    s->n++;
    return 0;
}

int seg_set_add_samples(seg_set *s, const run_config *rc, const char *path, int K, gd_err *err)
{
    msg_reader *r = msg_reader_open(path, err);
    if (!r)
        return -1;
    msg *m;
    int rc_;
    while ((rc_ = msg_reader_next(r, &m, err)) == 1) {
        char name[1100];
        const value *files = value_get(&m->meta, "files");
        if (files && files->type == V_ARRAY && files->u.c.n && files->u.c.items[0].type == V_STR)
            snprintf(name, sizeof name, "%s", files->u.c.items[0].u.s);
        else
            snprintf(name, sizeof name, "%s#%zu", path, msg_reader_count(r));
        rc_ = add_sample(s, rc, m, name, K, err);
        msg_free(m);
        if (rc_) {
            gd_err_prefix(err, "%s: message %zu", path, msg_reader_count(r));
            break;
        }
    }
    msg_reader_close(r);
    return rc_ < 0 ? -1 : 0;
}

void seg_set_free(seg_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->names[i]);
    free(s->names), free(s->img), free(s->lab);
    memset(s, 0, sizeof *s);
}
