/* multicrop.h: DINO's multi-crop augmentation of one sample into G global
 * and L local views, with the per-view probabilities of the DINO reference
 * code (and the Sentinel-2 recipe).
 *
 * Randomness: view v of sample s in epoch e draws from the stream
 * (seed, e, s, v) only, so every view is fully determined by its name
 * whatever the number of threads or the order of work. */
#ifndef GD_MULTICROP_H
#define GD_MULTICROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "augment.h"
#include "err.h"

/* The three kinds of view DINO treats differently. */
enum { MC_GLOBAL1, MC_GLOBAL2, MC_LOCAL, MC_KINDS };

typedef struct mc_config {
    int n_global, n_local;
    int global_size, local_size;
    double global_scale[2], local_scale[2];
    double ratio[2];              /* aspect ratio range (w/h) */
    double flip_p;
    double ssr_p;                 /* shift-scale-rotate */
    double ssr_shift, ssr_scale, ssr_rotate; /* limits: fraction, fraction, degrees */
    double jitter_p, brightness, contrast;
    bool jitter_shared;           /* one brightness/contrast pair for every band */
    double collapse_p[MC_KINDS];
    double blur_p[MC_KINDS];
    double blur_sigma[2];
    double solarize_p[MC_KINDS];
    double solarize_threshold;    /* in scaled reflectance */
    bool bicubic;                 /* resampling: bicubic instead of bilinear */
} mc_config;

/* Fills cfg with a named recipe: "dino" (DINO's ImageNet defaults) or "s2"
 * (120x120 Sentinel-2 tiles, patch size 8).  -1 when the name is unknown. */
int mc_recipe(mc_config *cfg, const char *name);

/* Checks ranges and sizes; -1 with err saying which option is wrong. */
int mc_config_check(const mc_config *cfg, gd_err *err);

/* Which kind view v is: 0 is global 1, the other globals are global 2,
 * then the locals. */
int mc_view_kind(const mc_config *cfg, int v);
int mc_view_size(const mc_config *cfg, int v);

/* What was drawn for one view (for tests and for the curious). */
typedef struct mc_view_info {
    view_geom geom;
    int tries;                    /* RandomResizedCrop tries, 11 = fallback */
    bool jitter, collapse, blur, solarize;
    int collapse_band;
    double sigma;
    double angle, ssr_scale, dx, dy;
} mc_view_info;

/* The source image: C bands of H x W, already scaled (x / scale) and with
 * invalid pixels filled; mean/std of the stats message in the same units. */
typedef struct mc_source {
    const float *data;
    int C, H, W;
    const float *mean, *std;
} mc_source;

/* Per-thread work space, sized for the largest view. */
typedef struct mc_scratch {
    warp_tap *taps;
    float *tmp;
    float *b, *c;                 /* per-band jitter factors */
    axis_tap *cols, *rows;        /* separable taps of views without rotation */
    float *row;                   /* one blended source row; grows with the crops */
    size_t row_cap;
} mc_scratch;

int mc_scratch_init(mc_scratch *s, const mc_config *cfg, int C, gd_err *err);
void mc_scratch_free(mc_scratch *s);

/* Draws the parameters of view v from r (geometry first, then the
 * photometric decisions, always in the same order). */
void mc_draw_view(const mc_config *cfg, int C, int H, int W, int v, rng *r, mc_view_info *info,
                  float *b, float *c);

/* Makes view v into dst [C, size, size], normalized. */
void mc_make_view(const mc_config *cfg, const mc_source *src, int v, rng *r, mc_scratch *s,
                  float *dst, mc_view_info *info);

/* Makes every view of one sample: globals into g [G, C, gs, gs], locals
 * into l [L, C, ls, ls], with the streams (seed, epoch, sample, v). */
void mc_make_sample(const mc_config *cfg, const mc_source *src, uint64_t seed, uint64_t epoch,
                    uint64_t sample, mc_scratch *s, float *g, float *l);

/* Scales a raster's data in place (x / scale) and replaces invalid pixels
 * (valid[i] == 0, or non-finite values) by the band mean, so that they
 * normalize to 0.  valid may be NULL. */
void mc_prepare(float *data, const uint8_t *valid, int C, size_t npix, double scale,
                const float *mean);

#endif
