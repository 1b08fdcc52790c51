/* augment.h: the image operations of DINO's multi-crop augmentation, for
 * float32 [bands, height, width] images of any band count.
 *
 * Geometry is one map per output pixel: RandomResizedCrop (torchvision's
 * parameter sampling), horizontal flip and an optional shift-scale-rotate
 * (albumentations' ShiftScaleRotate, reflect-101 border) are composed and
 * each output pixel is sampled once from the source, bilinearly.  The
 * photometric operations then work in place on the view.
 *
 * Nothing here allocates on the hot path: callers pass scratch buffers of
 * the sizes documented below, so a worker thread can reuse its own. */
#ifndef GD_AUGMENT_H
#define GD_AUGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "halfprec.h"

#include "rng.h"

/* A crop box in source pixels, as torchvision's get_params returns it:
 * rows [top, top+height), columns [left, left+width). */
typedef struct crop_box {
    int top, left, height, width;
} crop_box;

/* torchvision's RandomResizedCrop.get_params: up to ten tries of an area
 * fraction uniform in scale[0..1] and an aspect ratio (w/h) log-uniform in
 * ratio[0..1], rounded half to even like Python's round(); then the
 * centre-crop fallback.  H, W >= 1.  Returns the number of tries used
 * (1..10), or 11 when the fallback was taken. */
int rrc_sample(rng *r, int H, int W, const double scale[2], const double ratio[2], crop_box *out);

/* The geometry of one view: where each of its out_h x out_w pixels is
 * taken from in the source. */
typedef struct view_geom {
    crop_box crop;
    int out_h, out_w;
    bool flip;            /* mirror left-right */
    bool ssr;             /* apply inv (below) first */
    double inv[6];        /* output -> pre-rotation pixel: x' = inv0 x + inv1 y + inv2, y' = inv3 x + inv4 y + inv5 */
} view_geom;

/* Sets the shift-scale-rotate part as albumentations' ShiftScaleRotate
 * does on an out_h x out_w image: OpenCV's getRotationMatrix2D about the
 * centre of the image ((w-1)/2, (h-1)/2) with `angle_deg` counter-clockwise
 * and `scale`, then a shift of (dx*w, dy*h) pixels; stores its inverse. */
void view_geom_set_ssr(view_geom *g, double angle_deg, double scale, double dx, double dy);

/* The source position (x, y in pixels, pixel centres at integers) that
 * output pixel (ox, oy) samples, clamped to the crop box. */
void view_geom_source(const view_geom *g, double ox, double oy, double *sx, double *sy);

/* One bilinear tap set per output pixel. */
typedef struct warp_tap {
    int64_t off;          /* y0 * W + x0 in the source band */
    int16_t dx, dy;       /* 0 or 1: whether x0+1 / y0+1 are inside the crop */
    float fx, fy;         /* weights of x0+1 and y0+1 */
} warp_tap;

/* Fills taps[out_h * out_w] for a source of width W. */
void warp_taps(const view_geom *g, int W, warp_tap *taps);

/* dst[c][oy][ox] = bilinear sample of src[c] at the tap; C bands of H x W. */
void warp_apply(const float *src, int C, int H, int W, const warp_tap *taps, size_t npix,
                float *dst);

/* Without rotation (g->ssr false) the map is separable: one tap per
 * output column and one per output row. */
typedef struct axis_tap {
    int32_t i0;           /* source column (row) */
    int16_t step;         /* 0 or 1: whether i0+1 is inside the crop */
    float frac;           /* weight of i0+1 */
} axis_tap;

void warp_axes(const view_geom *g, axis_tap *cols, axis_tap *rows);

/* The same result as warp_apply up to rounding (rows are blended first),
 * faster: buf holds g->crop.width floats. */
void warp_apply_axes(const float *src, int C, int H, int W, const view_geom *g,
                     const axis_tap *cols, const axis_tap *rows, float *buf, float *dst);

/* Bicubic instead of bilinear (Keys, a = -0.75, as PyTorch's bicubic
 * interpolate: the source position is not clamped, the 4x4 taps are
 * clamped to the crop).  Slower: 16 taps per output value. */
void warp_apply_bicubic(const float *src, int C, int H, int W, const view_geom *g, float *dst);

/* Per-band brightness then contrast (DINO's ColorJitter for any band
 * count): x = x * b, then x = (x - mean) * c + mean with the band's mean,
 * then clamped below at 0.  b and c are arrays of C factors. */
void jitter_apply(float *img, int C, size_t npix, const float *b, const float *c);

/* Copies band k over every band (the multispectral RandomGrayscale). */
void collapse_apply(float *img, int C, size_t npix, int k);

/* A normalized Gaussian kernel of 2*radius+1 taps, radius = ceil(3 sigma)
 * limited to GAUSS_MAX_RADIUS; returns the radius. */
#define GAUSS_MAX_RADIUS 16
int gauss_kernel(double sigma, float *k);

/* Separable Gaussian blur in place, reflect-101 border (OpenCV's default).
 * tmp holds h*w + w + 2*GAUSS_MAX_RADIUS floats. */
void blur_apply(float *img, int C, int h, int w, double sigma, float *tmp);

/* Solarization: x >= t becomes 2t - x (for t = 0.5 on [0, 1] data this is
 * torchvision's 1 - x; for 8-bit data PIL's 255 - x at t = 127.5). */
void solarize_apply(float *img, size_t n, float t);

/* x = (x - mean[c]) / std[c] per band. */
void normalize_apply(float *img, int C, size_t npix, const float *mean, const float *std);


#endif
