/* raster.h: GeoTIFF rasters in and out (libtiff).
 *
 * A raster is [bands, height, width] float32 in C order, plus, when asked,
 * the native samples, and a validity mask when the file declares a nodata
 * value (GDAL's tag 42113) or holds NaN.
 *
 * A "sample" is one of:
 *   - a TIFF file with one or more bands ("scene.tif");
 *   - a band set given as a comma-separated list of single-band files
 *     ("p_B02.tif,p_B03.tif,p_B8A.tif");
 *   - a directory holding such a band set (BigEarthNet's "<patch>/"),
 *     its .tif/.tiff files taken in name order.
 * A band set's bands may differ in resolution: each is resampled
 * (bilinear, pixel centres aligned) to the finest grid among them.
 *
 * Band names: from a file's GDAL band descriptions when it has them, else
 * "B1".."Bn"; in a band set, from each file name, the part after the last
 * '_' ("p_B02.tif" -> "B02").  Bands are chosen with a spec of 1-based
 * indices or names, "4,3,2" or "B04,B03,B02", in the order wanted. */
#ifndef GD_RASTER_H
#define GD_RASTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef enum { RT_U8, RT_I8, RT_U16, RT_I16, RT_U32, RT_I32, RT_F32, RT_F64, RT_COUNT } raster_type;

const char *raster_type_name(raster_type t);   /* "uint8", ... as GDAL names them */
size_t raster_type_size(raster_type t);

typedef struct raster {
    int bands, height, width;
    float *data;            /* [bands][height][width] */
    uint8_t *valid;         /* same layout, 1 = valid; NULL when every sample is valid */
    raster_type type;       /* the source's sample type */
    void *native;           /* [bands][height][width] in `type`, only with keep_native,
                               and NULL for a band set that was resampled */
    bool has_nodata;
    double nodata;
    char **band_names;      /* `bands` strings */
} raster;

typedef struct raster_opts {
    const char *bands;      /* band spec ("4,3,2", "B04,B8A"); NULL: all bands */
    bool keep_native;       /* also fill raster.native where no band was resampled */
    size_t max_samples;     /* refuse larger rasters (bands*h*w); 0: RASTER_DEFAULT_MAX_SAMPLES */
} raster_opts;

#define RASTER_DEFAULT_MAX_SAMPLES ((size_t)1 << 31)

/* Reads a sample (see above).  opts may be NULL.  On error *out is left
 * empty and err says "path: what". */
int raster_read(const char *sample, const raster_opts *opts, raster *out, gd_err *err);

/* Reads a TIFF from memory (for the fuzzer and tests). */
int raster_read_mem(const void *buf, size_t len, const char *name, const raster_opts *opts,
                    raster *out, gd_err *err);

void raster_free(raster *r);

/* Declares `nodata` the nodata value (replacing the file's) and rebuilds
 * the validity mask from the float samples. */
int raster_set_nodata(raster *r, double nodata, gd_err *err);

/* Writes bands*height*width samples of `type` (RT_U8, RT_U16 or RT_F32),
 * planar, deflate-compressed, atomically (temporary name + rename). */
int raster_write(const char *path, const void *samples, raster_type type, int bands, int height,
                 int width, gd_err *err);

/* Converts r->data to `type` (rounded and clamped for integers) and writes it. */
int raster_write_float(const char *path, const raster *r, raster_type type, gd_err *err);

#endif
