/* bandstats.h: exact, order-stable statistics of raster bands.
 *
 * Moments are accumulated in float64 as (count, mean, M2, min, max):
 * each block of samples is summed in two passes (mean, then squared
 * deviations) and blocks are merged with Chan's parallel formula, always
 * in the same order, so results do not depend on how work was split
 * among threads.  The standard deviation is the population one (as GDAL).
 *
 * Percentiles are exact (numpy's default linear interpolation between
 * order statistics): a histogram pass finds the bins holding the wanted
 * ranks, a last pass collects just the values of those bins. */
#ifndef GD_BANDSTATS_H
#define GD_BANDSTATS_H

#include <stddef.h>
#include <stdint.h>

#include "raster.h"

typedef struct moments {
    uint64_t count;
    double mean, m2, min, max;
} moments;

void moments_init(moments *m);
void moments_merge(moments *into, const moments *other);
double moments_std(const moments *m);      /* population; NaN when empty */

/* The samples of band b of r, as float64 (native values where the raster
 * has them): calls fn(ctx, values, n) for consecutive runs of valid
 * samples, in order. */
typedef void (*sample_fn)(void *ctx, const double *v, size_t n);
void band_foreach(const raster *r, int b, sample_fn fn, void *ctx);

/* Moments of band b of r. */
void band_moments(const raster *r, int b, moments *out);

/* Histogram of `nbins` equal bins over [lo, hi] (the last bin closed);
 * values outside are not counted. */
typedef struct histogram {
    double lo, hi;
    int nbins;
    uint64_t *counts;
} histogram;

int histogram_init(histogram *h, double lo, double hi, int nbins);
void histogram_free(histogram *h);
void histogram_add_band(histogram *h, const raster *r, int b);
void histogram_merge(histogram *into, const histogram *other);
int histogram_bin(const histogram *h, double v);   /* -1 when outside */

/* Exact percentiles in two more passes over the data:
 *   1. a fine histogram (PCT_BINS bins over [min, max]) of every band of
 *      every file; percentile_plan() finds the bins that hold the order
 *      statistics wanted;
 *   2. percentile_collect() gathers the values of just those bins;
 *      percentile_finish() sorts them and interpolates.
 * Memory is the values of a few bins, not the data set. */
#define PCT_BINS 65536

typedef struct pct_plan {
    int n;                    /* number of percentiles */
    double levels[16];        /* in 0..100 */
    uint64_t total;           /* values in the histogram */
    histogram hist;           /* the fine histogram (owned) */
    uint64_t *cum;            /* [PCT_BINS + 1]: values in bins before bin j */
    uint8_t *need;            /* [PCT_BINS]: collect this bin */
    double *vals;             /* collected values */
    size_t nvals, cap;
    int oom;
} pct_plan;

/* Takes ownership of *fine (left empty). */
int percentile_plan(pct_plan *p, histogram *fine, const double *levels, int n);
/* A plan with the same bins and no values, for one thread's collection. */
int percentile_clone_empty(pct_plan *dst, const pct_plan *src);
void percentile_collect(pct_plan *p, const raster *r, int b);
int percentile_merge(pct_plan *into, const pct_plan *other);
/* Fills out[n] (NaN when there are no values); -1 when out of memory. */
int percentile_finish(pct_plan *p, double *out);
void percentile_free(pct_plan *p);

#endif
