/* aelpaste.h: the class-balancing augmentations of Adaptive Equalization
 * Learning (AEL, Hu et al., NeurIPS 2021) for semi-supervised
 * segmentation: the class-confidence bank, adaptive copy-paste and
 * adaptive cutmix.
 *
 * A sample is an image [bands][height][width] float32 and a label map
 * [height][width] of class ids (uint8), one value `ignore` meaning "no
 * label".  Everything here works on memory; the caller draws its random
 * streams from (seed, sample index, part) so that results do not depend
 * on threads. */
#ifndef GD_AELPASTE_H
#define GD_AELPASTE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "rng.h"

#define AEL_MAX_CLASSES 256          /* class ids are uint8 */

typedef struct ael_sample {
    int bands, height, width;
    float *image;                    /* [bands][height][width] */
    uint8_t *label;                  /* [height][width] */
} ael_sample;

/* Allocates a zeroed sample; 0 or -1 (err says why: sizes, memory). */
int ael_sample_alloc(ael_sample *s, int bands, int height, int width, gd_err *err);
void ael_sample_free(ael_sample *s);

/* ---- the confidence bank ---------------------------------------------- */

/* conf[k] = value for every k, or uniform in [0, 1) from (seed) when
 * value < 0, as AEL starts (torch.rand). */
void ael_bank_init(double *conf, int classes, double value, uint64_t seed);

/* conf = momentum * conf + (1 - momentum) * means: AEL's exponential
 * moving average of the per-class mean confidence.  A class absent from
 * the batch has mean 0.  Means must lie in [0, 1]; -1 otherwise. */
int ael_bank_update(double *conf, const double *means, int classes, double momentum, gd_err *err);

/* Sampling probabilities softmax((1 - conf)^power) over the candidate
 * classes (candidate[k] != 0); others get 0.  AEL uses power 0.5 for
 * copy-paste and 1 for cutmix.  Returns the number of candidates (the
 * probabilities are all 0 when it is 0). */
int ael_class_probs(const double *conf, const uint8_t *candidate, int classes, double power,
                    double *probs);

/* One class drawn from probs (summing to 1) by inverse CDF. */
int ael_draw_class(const double *probs, int classes, rng *r);

/* AEL's query classes: `num` draws with replacement, then duplicates
 * removed.  chosen[k] is set to 1 for drawn classes (others 0); returns
 * how many distinct classes were drawn (0 when there is no candidate). */
int ael_query_classes(const double *probs, int classes, int num, rng *r, uint8_t *chosen);

/* ---- geometry ----------------------------------------------------------- */

/* Bilinear resize of every band (pixel centres aligned, as OpenCV's
 * INTER_LINEAR and torch's align_corners=False). */
void ael_resize_bilinear(const float *src, int bands, int h, int w, float *dst, int h2, int w2);
/* Nearest-neighbour resize of a label map (OpenCV's INTER_NEAREST). */
void ael_resize_nearest(const uint8_t *src, int h, int w, uint8_t *dst, int h2, int w2);
/* A sample resized to (h2, w2): bilinear image, nearest label. */
int ael_sample_resize(const ael_sample *src, int h2, int w2, ael_sample *out, gd_err *err);

/* The random transform a paste sample gets before it is pasted: scale
 * (the resized size), horizontal flip, and the crop offset into the
 * resized, padded sample. */
typedef struct ael_geom {
    int rh, rw;                      /* size after the resize */
    int flip;                        /* horizontal flip */
    int oy, ox;                      /* crop origin in the padded, resized sample */
} ael_geom;

/* Draws a transform for a paste sample of size (h, w) onto a base of
 * size (H, W): scale uniform in [smin, smax], flip with flip_prob. */
void ael_draw_geom(rng *r, int h, int w, int H, int W, double smin, double smax, double flip_prob,
                   ael_geom *g);

/* Applies g to src, giving out of size (H, W): resize, flip, pad the
 * bottom and right (image with 0, label with `ignore`) up to (H, W), crop. */
int ael_apply_geom(const ael_sample *src, const ael_geom *g, int H, int W, int ignore,
                   ael_sample *out, gd_err *err);

/* ---- copy-paste -------------------------------------------------------- */

/* alpha = 1 where paste->label is a chosen class (never `ignore`);
 * out = (1 - alpha) * base + alpha * paste for image and label.  base,
 * paste and out have the same size and bands; mask (may be NULL) gets
 * alpha.  Returns the number of pasted pixels. */
size_t ael_copy_paste(const ael_sample *base, const ael_sample *paste, const uint8_t *chosen,
                      int classes, int ignore, ael_sample *out, uint8_t *mask);

/* ---- cutmix ------------------------------------------------------------ */

/* present[k] = 1 when class k covers at least thresh2 of the pixels (and
 * at least one); `ignore` and ids >= classes never count. */
void ael_presence(const uint8_t *label, size_t npix, int classes, int ignore, double thresh2,
                  uint8_t *present);

typedef struct ael_box {
    int y0, x0, y1, x1;              /* rows y0..y1-1, columns x0..x1-1 */
} ael_box;

typedef struct ael_component {
    size_t area;
    ael_box box;
} ael_component;

/* The 8-connected components of the pixels equal to cls, in raster order
 * of their first pixel.  *out is malloc'ed (free it); returns the count
 * or -1. */
long ael_components(const uint8_t *label, int h, int w, int cls, ael_component **out, gd_err *err);

/* AEL's init_cutmix box: area half the image, height fraction
 * 0.5^u (u uniform), width fraction 0.5 / that, random position. */
void ael_init_cutmix(rng *r, int h, int w, ael_box *box);

/* AEL's box for class cls in a predicted map: the bounding box of a
 * random 8-connected component larger than area_thresh of the image, else
 * (none, or cls absent) an init_cutmix box.  Returns 1 for a component
 * box, 0 for a random box, -1 on error. */
int ael_cutmix_box(const uint8_t *label, int h, int w, int cls, double area_thresh, rng *r,
                   ael_box *box, gd_err *err);

/* out = base, with image and label taken from src inside the box (same
 * sizes); mask (may be NULL) gets 1 inside the box. */
void ael_cutmix(const ael_sample *base, const ael_sample *src, const ael_box *box, ael_sample *out,
                uint8_t *mask);

/* ---- per-class means as JSON ------------------------------------------- */

/* Parses per-class mean confidences for a bank update: a JSON array of
 * numbers ([0.9, 0.5, null, ...], null = absent = 0) or an object mapping
 * class ids to numbers ({"0": 0.9, "3": 0.5}; missing classes are 0),
 * optionally wrapped as {"means": ...}.  means has `classes` entries. */
int ael_parse_means_json(const char *text, size_t len, int classes, double *means, gd_err *err);

#endif
