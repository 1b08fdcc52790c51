#include "picture.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"

/* libpng reports errors by longjmp; keep that confined to this function
 * and the variables it touches volatile-safe (nothing is live across it
 * but the file handles, which are cleaned up below). */
static int write_png_stream(FILE *fp, const uint8_t *rgb, int width, int height, char *why,
                            size_t whylen)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png) {
        snprintf(why, whylen, "libpng: out of memory");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info || setjmp(png_jmpbuf(png))) {
        snprintf(why, whylen, "libpng: write failed");
        png_destroy_write_struct(&png, info ? &info : NULL);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * (size_t)width * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, gd_err *err)
{
    if (width <= 0 || height <= 0)
        return gd_errf(err, "%s: empty image (%dx%d)", path, width, height);
    atomic_file af;
    if (atomic_open(&af, path, err) < 0)
        return -1;
    FILE *fp = fdopen(af.fd, "wb");
    if (!fp) {
        gd_errno(err, path);
        atomic_abort(&af);
        return -1;
    }
    char why[128];
    int rc = write_png_stream(fp, rgb, width, height, why, sizeof why);
    if (rc < 0)
        gd_errf(err, "%s: %s", path, why);
    if (fflush(fp) != 0 && rc == 0)
        rc = gd_errno(err, path);
    /* hand the descriptor back to atomic_commit, which closes it */
    af.fd = dup(af.fd);
    fclose(fp);
    if (af.fd < 0 && rc == 0)
        rc = gd_errno(err, path);
    if (rc < 0) {
        atomic_abort(&af);
        return -1;
    }
    return atomic_commit(&af, err);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

double percentile_f32(const float *x, size_t n, double p)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return NAN;
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(x[i]))
            v[m++] = x[i];
    if (m == 0) {
        free(v);
        return NAN;
    }
    qsort(v, m, sizeof *v, cmp_float);
    double pos = p / 100.0 * (double)(m - 1);
    size_t lo = (size_t)floor(pos), hi = lo + 1 < m ? lo + 1 : lo;
    double r = v[lo] + (pos - (double)lo) * ((double)v[hi] - v[lo]);
    free(v);
    return r;
}

void stretch_to_u8(const float *x, size_t n, double lo, double hi, uint8_t *out, size_t stride)
{
    double scale = hi > lo ? 255.0 / (hi - lo) : 0.0;
    for (size_t i = 0; i < n; i++) {
        double v = isfinite(x[i]) ? (x[i] - lo) * scale : 0.0;
        out[i * stride] = (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : lround(v));
    }
}
