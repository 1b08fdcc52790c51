/* picture.h: pictures for people: RGB PNG files (libpng) and the percentile
 * stretch that turns reflectance into display values. */
#ifndef GD_PICTURE_H
#define GD_PICTURE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Writes width*height RGB triplets (row-major) as an 8-bit PNG, atomically. */
int png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, gd_err *err);

/* The p-th percentile (0..100, linear interpolation between order
 * statistics, as numpy's default) of the finite values of x; NaN when
 * there are none.  Works on a copy; x is not changed. */
double percentile_f32(const float *x, size_t n, double p);

/* out[i] = x[i] mapped linearly from [lo, hi] to [0, 255], clamped;
 * `stride` is the distance between outputs (3 to fill one channel of an
 * RGB image). */
void stretch_to_u8(const float *x, size_t n, double lo, double hi, uint8_t *out, size_t stride);

#endif
