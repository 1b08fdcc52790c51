#include "bandstats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 4096

void moments_init(moments *m)
{
    *m = (moments){.count = 0, .mean = 0, .m2 = 0, .min = INFINITY, .max = -INFINITY};
}

/* Chan, Golub and LeVeque's pairwise update. */
void moments_merge(moments *into, const moments *o)
{
    if (o->count == 0)
        return;
    if (into->count == 0) {
        *into = *o;
        return;
    }
    double na = (double)into->count, nb = (double)o->count, n = na + nb;
    double delta = o->mean - into->mean;
    into->mean += delta * nb / n;
    into->m2 += o->m2 + delta * delta * na * nb / n;
    into->count += o->count;
    if (o->min < into->min)
        into->min = o->min;
    if (o->max > into->max)
        into->max = o->max;
}

double moments_std(const moments *m)
{
    return m->count ? sqrt(m->m2 / (double)m->count) : NAN;
}

static double native_at(const raster *r, size_t i)
{
    const void *p = r->native;
    switch (r->type) {
    case RT_U8: return ((const uint8_t *)p)[i];
    case RT_I8: return ((const int8_t *)p)[i];
    case RT_U16: return ((const uint16_t *)p)[i];
    case RT_I16: return ((const int16_t *)p)[i];
    case RT_U32: return ((const uint32_t *)p)[i];
    case RT_I32: return ((const int32_t *)p)[i];
    case RT_F32: return ((const float *)p)[i];
    case RT_F64: return ((const double *)p)[i];
    default: return NAN;
    }
}

void band_foreach(const raster *r, int b, sample_fn fn, void *ctx)
{
    size_t plane = (size_t)r->height * r->width, base = (size_t)b * plane;
    double buf[BLOCK];
    size_t n = 0;
    for (size_t i = 0; i < plane; i++) {
        size_t at = base + i;
        if (r->valid && !r->valid[at])
            continue;
        double v = r->native ? native_at(r, at) : r->data[at];
        if (isnan(v))
            continue;
        buf[n++] = v;
        if (n == BLOCK) {
            fn(ctx, buf, n);
            n = 0;
        }
    }
    if (n)
        fn(ctx, buf, n);
}

static void add_block(void *ctx, const double *v, size_t n)
{
    moments blk;
    moments_init(&blk);
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += v[i];
        if (v[i] < blk.min)
            blk.min = v[i];
        if (v[i] > blk.max)
            blk.max = v[i];
    }
    blk.count = n;
    blk.mean = sum / (double)n;
    for (size_t i = 0; i < n; i++) {
        double d = v[i] - blk.mean;
        blk.m2 += d * d;
    }
    moments_merge(ctx, &blk);
}

void band_moments(const raster *r, int b, moments *out)
{
    moments_init(out);
    band_foreach(r, b, add_block, out);
}

/* ---- histograms ---------------------------------------------------------- */

int histogram_init(histogram *h, double lo, double hi, int nbins)
{
    h->lo = lo;
    h->hi = hi;
    h->nbins = nbins;
    h->counts = calloc((size_t)nbins, sizeof *h->counts);
    return h->counts ? 0 : -1;
}

void histogram_free(histogram *h)
{
    free(h->counts);
    h->counts = NULL;
}

int histogram_bin(const histogram *h, double v)
{
    if (!(v >= h->lo && v <= h->hi))
        return -1;
    if (h->hi <= h->lo)
        return 0;
    double f = (v - h->lo) / (h->hi - h->lo) * h->nbins;
    int k = (int)f;
    return k >= h->nbins ? h->nbins - 1 : k;
}

static void hist_block(void *ctx, const double *v, size_t n)
{
    histogram *h = ctx;
    for (size_t i = 0; i < n; i++) {
        int k = histogram_bin(h, v[i]);
        if (k >= 0)
            h->counts[k]++;
    }
}

void histogram_add_band(histogram *h, const raster *r, int b) { band_foreach(r, b, hist_block, h); }

void histogram_merge(histogram *into, const histogram *o)
{
    for (int k = 0; k < into->nbins; k++)
        into->counts[k] += o->counts[k];
}

/* ---- exact percentiles --------------------------------------------------- */

/* The bin holding 0-based order statistic `rank`. */
static int bin_of_rank(const pct_plan *p, uint64_t rank)
{
    int lo = 0, hi = p->hist.nbins - 1;
    while (lo < hi) { /* first bin j with cum[j + 1] > rank */
        int mid = (lo + hi) / 2;
        if (p->cum[mid + 1] > rank)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* numpy's linear method: position p/100 * (n - 1) between two ranks. */
static void rank_of(double level, uint64_t total, uint64_t *lo, double *frac)
{
    double pos = level / 100.0 * (double)(total - 1);
    *lo = (uint64_t)floor(pos);
    if (*lo > total - 1)
        *lo = total - 1;
    *frac = pos - (double)*lo;
}

int percentile_plan(pct_plan *p, histogram *fine, const double *levels, int n)
{
    memset(p, 0, sizeof *p);
    p->hist = *fine;
    fine->counts = NULL;
    p->n = n > 16 ? 16 : n;
    memcpy(p->levels, levels, (size_t)p->n * sizeof *levels);
    p->cum = calloc((size_t)p->hist.nbins + 1, sizeof *p->cum);
    p->need = calloc((size_t)p->hist.nbins, 1);
    if (!p->cum || !p->need)
        return -1;
    for (int k = 0; k < p->hist.nbins; k++)
        p->cum[k + 1] = p->cum[k] + p->hist.counts[k];
    p->total = p->cum[p->hist.nbins];
    for (int k = 0; p->total && k < p->n; k++) {
        uint64_t lo;
        double frac;
        rank_of(p->levels[k], p->total, &lo, &frac);
        p->need[bin_of_rank(p, lo)] = 1;
        if (lo + 1 < p->total)
            p->need[bin_of_rank(p, lo + 1)] = 1;
    }
    return 0;
}

int percentile_clone_empty(pct_plan *dst, const pct_plan *src)
{
    memset(dst, 0, sizeof *dst);
    dst->n = src->n;
    dst->hist = src->hist;
    dst->hist.counts = NULL; /* only the geometry is needed to collect */
    dst->need = malloc((size_t)src->hist.nbins);
    if (!dst->need)
        return -1;
    memcpy(dst->need, src->need, (size_t)src->hist.nbins);
    return 0;
}

static void collect_block(void *ctx, const double *v, size_t n)
{
    pct_plan *p = ctx;
    for (size_t i = 0; i < n && !p->oom; i++) {
        int k = histogram_bin(&p->hist, v[i]);
        if (k < 0 || !p->need[k])
            continue;
        if (p->nvals == p->cap) {
            size_t cap = p->cap ? 2 * p->cap : 1024;
            double *nv = realloc(p->vals, cap * sizeof *nv);
            if (!nv) {
                p->oom = 1;
                return;
            }
            p->vals = nv;
            p->cap = cap;
        }
        p->vals[p->nvals++] = v[i];
    }
}

void percentile_collect(pct_plan *p, const raster *r, int b) { band_foreach(r, b, collect_block, p); }

int percentile_merge(pct_plan *into, const pct_plan *o)
{
    if (o->oom)
        into->oom = 1;
    collect_block(into, o->vals, o->nvals);
    return into->oom ? -1 : 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int percentile_finish(pct_plan *p, double *out)
{
    if (p->oom)
        return -1;
    qsort(p->vals, p->nvals, sizeof *p->vals, cmp_double);
    /* collected[j]: collected values in needed bins before bin j */
    uint64_t *collected = calloc((size_t)p->hist.nbins + 1, sizeof *collected);
    if (!collected)
        return -1;
    for (int k = 0; k < p->hist.nbins; k++)
        collected[k + 1] = collected[k] + (p->need[k] ? p->hist.counts[k] : 0);
    for (int k = 0; k < p->n; k++) {
        if (p->total == 0) {
            out[k] = NAN;
            continue;
        }
        uint64_t lo;
        double frac;
        rank_of(p->levels[k], p->total, &lo, &frac);
        double v[2];
        for (int t = 0; t < 2; t++) {
            uint64_t rank = lo + (uint64_t)t < p->total ? lo + (uint64_t)t : lo;
            int j = bin_of_rank(p, rank);
            size_t idx = (size_t)(collected[j] + (rank - p->cum[j]));
            v[t] = idx < p->nvals ? p->vals[idx] : NAN;
        }
        out[k] = v[0] + frac * (v[1] - v[0]);
    }
    free(collected);
    return 0;
}

void percentile_free(pct_plan *p)
{
    histogram_free(&p->hist);
    free(p->cum);
    free(p->need);
    free(p->vals);
    memset(p, 0, sizeof *p);
}
