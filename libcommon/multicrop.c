#include "multicrop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* DINO's main_dino.py DataAugmentationDINO with ImageNet sizes. */
static void recipe_dino(mc_config *c)
{
    memset(c, 0, sizeof *c);
    c->n_global = 2;
    c->n_local = 8;
    c->global_size = 224;
    c->local_size = 96;
    c->global_scale[0] = 0.4, c->global_scale[1] = 1.0;
    c->local_scale[0] = 0.05, c->local_scale[1] = 0.4;
    c->ratio[0] = 3.0 / 4.0, c->ratio[1] = 4.0 / 3.0;
    c->flip_p = 0.5;
    c->ssr_p = 0.0;
    c->ssr_shift = 0.0625, c->ssr_scale = 0.1, c->ssr_rotate = 45.0;
    c->jitter_p = 0.8, c->brightness = 0.4, c->contrast = 0.4;
    for (int k = 0; k < MC_KINDS; k++)
        c->collapse_p[k] = 0.2;
    c->blur_p[MC_GLOBAL1] = 1.0, c->blur_p[MC_GLOBAL2] = 0.1, c->blur_p[MC_LOCAL] = 0.5;
    c->blur_sigma[0] = 0.1, c->blur_sigma[1] = 2.0;
    c->solarize_p[MC_GLOBAL2] = 0.2;
    c->solarize_threshold = 0.5;
}

int mc_recipe(mc_config *cfg, const char *name)
{
    if (strcmp(name, "dino") == 0) {
        recipe_dino(cfg);
        return 0;
    }
    if (strcmp(name, "s2") == 0) {
        /* 120x120 Sentinel-2 tiles, patch size 8: 15x15 and 7x7 patches */
        recipe_dino(cfg);
        cfg->global_size = 120;
        cfg->local_size = 56;
        cfg->n_local = 6;
        cfg->ssr_p = 0.5;
        cfg->collapse_p[MC_GLOBAL1] = 1.0;
        return 0;
    }
    return -1;
}

static int check_range(const double r[2], double lo, double hi, const char *what, gd_err *err)
{
    if (!(r[0] >= lo && r[1] <= hi && r[0] <= r[1]))
        return gd_errf(err, "%s: [%g, %g] is not an interval inside [%g, %g]", what, r[0], r[1],
                       lo, hi);
    return 0;
}

static int check_prob(const double *p, int n, const char *what, gd_err *err)
{
    for (int k = 0; k < n; k++)
        if (!(p[k] >= 0 && p[k] <= 1))
            return gd_errf(err, "%s: %g is not a probability", what, p[k]);
    return 0;
}

int mc_config_check(const mc_config *c, gd_err *err)
{
    if (c->n_global < 1 || c->n_global > 64 || c->n_local < 0 || c->n_local > 64)
        return gd_errf(err, "crops number: %d global, %d local (1..64 global, 0..64 local)",
                       c->n_global, c->n_local);
    if (c->global_size < 1 || c->global_size > 4096 || c->local_size < 1 || c->local_size > 4096)
        return gd_errf(err, "view size: %d global, %d local (1..4096)", c->global_size,
                       c->local_size);
    if (check_range(c->global_scale, 1e-6, 1, "--global-crops-scale", err) < 0 ||
        check_range(c->local_scale, 1e-6, 1, "--local-crops-scale", err) < 0 ||
        check_range(c->ratio, 1e-3, 1e3, "--aspect-ratio", err) < 0 ||
        check_range(c->blur_sigma, 1e-3, 5, "--blur-sigma", err) < 0)
        return -1;
    double single[] = {c->flip_p, c->ssr_p, c->jitter_p};
    if (check_prob(single, 3, "probability", err) < 0 ||
        check_prob(c->collapse_p, MC_KINDS, "--collapse-prob", err) < 0 ||
        check_prob(c->blur_p, MC_KINDS, "--blur-prob", err) < 0 ||
        check_prob(c->solarize_p, MC_KINDS, "--solarize-prob", err) < 0)
        return -1;
    if (!(c->brightness >= 0 && c->brightness < 1 && c->contrast >= 0 && c->contrast < 1))
        return gd_errf(err, "--brightness/--contrast must be in [0, 1)");
    if (!(c->ssr_shift >= 0 && c->ssr_shift <= 1 && c->ssr_scale >= 0 && c->ssr_scale < 1 &&
          c->ssr_rotate >= 0 && c->ssr_rotate <= 180))
        return gd_errf(err, "shift-scale-rotate limits out of range");
    return 0;
}

int mc_view_kind(const mc_config *cfg, int v)
{
    return v == 0 ? MC_GLOBAL1 : v < cfg->n_global ? MC_GLOBAL2 : MC_LOCAL;
}

int mc_view_size(const mc_config *cfg, int v)
{
    return v < cfg->n_global ? cfg->global_size : cfg->local_size;
}

int mc_scratch_init(mc_scratch *s, const mc_config *cfg, int C, gd_err *err)
{
    int size = cfg->global_size > cfg->local_size ? cfg->global_size : cfg->local_size;
    size_t npix = (size_t)size * size;
    s->taps = malloc(npix * sizeof *s->taps);
    s->tmp = malloc((npix + size + 2 * GAUSS_MAX_RADIUS) * sizeof *s->tmp);
    s->b = malloc((size_t)C * sizeof *s->b);
    s->c = malloc((size_t)C * sizeof *s->c);
    s->cols = malloc((size_t)size * sizeof *s->cols);
    s->rows = malloc((size_t)size * sizeof *s->rows);
    s->row = NULL, s->row_cap = 0;
    if (!s->taps || !s->tmp || !s->b || !s->c || !s->cols || !s->rows) {
        mc_scratch_free(s);
        return gd_errf(err, "out of memory");
    }
    return 0;
}

void mc_scratch_free(mc_scratch *s)
{
    free(s->taps);
    free(s->tmp);
    free(s->b);
    free(s->c);
    free(s->cols);
    free(s->rows);
    free(s->row);
    memset(s, 0, sizeof *s);
}

static void draw_geometry(const mc_config *cfg, int H, int W, int v, rng *r, mc_view_info *info)
{
    bool global = v < cfg->n_global;
    view_geom *g = &info->geom;
    memset(g, 0, sizeof *g);
    info->tries = rrc_sample(r, H, W, global ? cfg->global_scale : cfg->local_scale, cfg->ratio,
                             &g->crop);
    g->out_h = g->out_w = mc_view_size(cfg, v);
    g->flip = rng_bernoulli(r, cfg->flip_p);
    info->angle = 0, info->ssr_scale = 1, info->dx = info->dy = 0;
    if (rng_bernoulli(r, cfg->ssr_p)) {
        /* albumentations ShiftScaleRotate: shift, scale and angle uniform */
        info->dx = rng_range(r, -cfg->ssr_shift, cfg->ssr_shift);
        info->dy = rng_range(r, -cfg->ssr_shift, cfg->ssr_shift);
        info->ssr_scale = rng_range(r, 1 - cfg->ssr_scale, 1 + cfg->ssr_scale);
        info->angle = rng_range(r, -cfg->ssr_rotate, cfg->ssr_rotate);
        view_geom_set_ssr(g, info->angle, info->ssr_scale, info->dx, info->dy);
    }
}

void mc_draw_view(const mc_config *cfg, int C, int H, int W, int v, rng *r, mc_view_info *info,
                  float *b, float *c)
{
    int kind = mc_view_kind(cfg, v);
    draw_geometry(cfg, H, W, v, r, info);
    info->jitter = rng_bernoulli(r, cfg->jitter_p);
    /* shared: one pair for the whole view, so the spectrum keeps its shape
     * while the view's gain differs from the other views of the sample
     * (an illumination change); per band it also changes the spectrum */
    if (info->jitter)
        for (int k = 0; k < C; k++) {
            if (cfg->jitter_shared && k > 0) {
                b[k] = b[0], c[k] = c[0];
                continue;
            }
            b[k] = (float)rng_range(r, 1 - cfg->brightness, 1 + cfg->brightness);
            c[k] = (float)rng_range(r, 1 - cfg->contrast, 1 + cfg->contrast);
        }
    info->collapse = rng_bernoulli(r, cfg->collapse_p[kind]);
    info->collapse_band = info->collapse ? (int)rng_below(r, (uint64_t)C) : -1;
    info->blur = rng_bernoulli(r, cfg->blur_p[kind]);
    info->sigma = info->blur ? rng_range(r, cfg->blur_sigma[0], cfg->blur_sigma[1]) : 0;
    info->solarize = rng_bernoulli(r, cfg->solarize_p[kind]);
}

/* A row buffer as wide as the crop; false when it cannot grow. */
static bool row_room(mc_scratch *s, size_t n)
{
    if (n <= s->row_cap)
        return true;
    float *p = realloc(s->row, n * sizeof *p);
    if (!p)
        return false;
    s->row = p;
    s->row_cap = n;
    return true;
}

static void warp_view(const mc_config *cfg, const mc_source *src, const view_geom *g,
                      mc_scratch *s, float *dst)
{
    if (cfg->bicubic) {
        warp_apply_bicubic(src->data, src->C, src->H, src->W, g, dst);
        return;
    }
    if (!g->ssr && row_room(s, (size_t)g->crop.width)) {
        warp_axes(g, s->cols, s->rows);
        warp_apply_axes(src->data, src->C, src->H, src->W, g, s->cols, s->rows, s->row, dst);
        return;
    }
    warp_taps(g, src->W, s->taps);
    warp_apply(src->data, src->C, src->H, src->W, s->taps, (size_t)g->out_h * g->out_w, dst);
}

void mc_make_view(const mc_config *cfg, const mc_source *src, int v, rng *r, mc_scratch *s,
                  float *dst, mc_view_info *info)
{
    mc_view_info local;
    if (!info)
        info = &local;
    mc_draw_view(cfg, src->C, src->H, src->W, v, r, info, s->b, s->c);
    int size = info->geom.out_w;
    size_t npix = (size_t)size * size;
    warp_view(cfg, src, &info->geom, s, dst);
    /* DINO's order: colour jitter, grayscale, blur, solarization, normalize */
    if (info->jitter)
        jitter_apply(dst, src->C, npix, s->b, s->c);
    if (info->collapse)
        collapse_apply(dst, src->C, npix, info->collapse_band);
    if (info->blur)
        blur_apply(dst, src->C, size, size, info->sigma, s->tmp);
    if (info->solarize)
        solarize_apply(dst, (size_t)src->C * npix, (float)cfg->solarize_threshold);
    normalize_apply(dst, src->C, npix, src->mean, src->std);
}

void mc_make_sample(const mc_config *cfg, const mc_source *src, uint64_t seed, uint64_t epoch,
                    uint64_t sample, mc_scratch *s, float *g, float *l)
{
    size_t gview = (size_t)src->C * cfg->global_size * cfg->global_size;
    size_t lview = (size_t)src->C * cfg->local_size * cfg->local_size;
    for (int v = 0; v < cfg->n_global + cfg->n_local; v++) {
        rng r;
        rng_init(&r, seed, epoch, sample, (uint64_t)v);
        float *dst = v < cfg->n_global ? g + v * gview : l + (size_t)(v - cfg->n_global) * lview;
        mc_make_view(cfg, src, v, &r, s, dst, NULL);
    }
}

void mc_prepare(float *data, const uint8_t *valid, int C, size_t npix, double scale,
                const float *mean)
{
    float inv = (float)(1.0 / scale);
    for (int c = 0; c < C; c++) {
        float *x = data + (size_t)c * npix;
        const uint8_t *ok = valid ? valid + (size_t)c * npix : NULL;
        for (size_t p = 0; p < npix; p++)
            x[p] = (ok && !ok[p]) || !isfinite(x[p]) ? mean[c] : x[p] * inv;
    }
}
