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

/* Native samples of one type into float64, skipping masked ones and NaN;
 * fn gets runs of at most BLOCK values. */
#define DEFINE_FOREACH(NAME, T)                                                        \
    static void NAME(const T *x, const uint8_t *valid, size_t n, sample_fn fn, void *ctx) \
    {                                                                                  \
        double buf[BLOCK];                                                             \
        size_t k = 0;                                                                  \
        for (size_t i = 0; i < n; i++) {                                               \
            double v = (double)x[i];                                                   \
            if ((valid && !valid[i]) || isnan(v))                                      \
                continue;                                                              \
            buf[k++] = v;                                                              \
            if (k == BLOCK) {                                                          \
                fn(ctx, buf, k);                                                       \
                k = 0;                                                                 \
            }                                                                          \
        }                                                                              \
        if (k)                                                                         \
            fn(ctx, buf, k);                                                           \
    }
DEFINE_FOREACH(each_u8, uint8_t)
DEFINE_FOREACH(each_i8, int8_t)
DEFINE_FOREACH(each_u16, uint16_t)
DEFINE_FOREACH(each_i16, int16_t)
DEFINE_FOREACH(each_u32, uint32_t)
DEFINE_FOREACH(each_i32, int32_t)
DEFINE_FOREACH(each_f32, float)
DEFINE_FOREACH(each_f64, double)

void band_foreach(const raster *r, int b, sample_fn fn, void *ctx)
{
    size_t plane = (size_t)r->height * r->width, base = (size_t)b * plane;
    const uint8_t *valid = r->valid ? r->valid + base : NULL;
    if (!r->native) {
        each_f32(r->data + base, valid, plane, fn, ctx);
        return;
    }
    const char *p = (const char *)r->native + base * raster_type_size(r->type);
    switch (r->type) {
    case RT_U8: each_u8((const uint8_t *)p, valid, plane, fn, ctx); break;
    case RT_I8: each_i8((const int8_t *)p, valid, plane, fn, ctx); break;
    case RT_U16: each_u16((const uint16_t *)p, valid, plane, fn, ctx); break;
    case RT_I16: each_i16((const int16_t *)p, valid, plane, fn, ctx); break;
    case RT_U32: each_u32((const uint32_t *)p, valid, plane, fn, ctx); break;
    case RT_I32: each_i32((const int32_t *)p, valid, plane, fn, ctx); break;
    case RT_F32: each_f32((const float *)p, valid, plane, fn, ctx); break;
    case RT_F64: each_f64((const double *)p, valid, plane, fn, ctx); break;
    default: break;
    }
}

/* Samples of at most 16 bits with no mask: sums are exact in integers
 * (|v| < 2^16, so a chunk of 2^20 squares fits in 64 bits, and the total
 * in 128), which is both faster and more accurate than float64. */
#define SMALL_CHUNK ((size_t)1 << 20)
#define DEFINE_INT_MOMENTS(NAME, T)                                                    \
    static void NAME(const T *x, size_t n, moments *out)                               \
    {                                                                                  \
        __int128 sum = 0;                                                              \
        unsigned __int128 sumsq = 0;                                                   \
        T lo = x[0], hi = x[0];                                                        \
        for (size_t c = 0; c < n; c += SMALL_CHUNK) {                                  \
            size_t end = c + SMALL_CHUNK < n ? c + SMALL_CHUNK : n;                    \
            int64_t s = 0;                                                             \
            uint64_t q = 0;                                                            \
            for (size_t i = c; i < end; i++) {                                         \
                int64_t v = x[i];                                                      \
                s += v;                                                                \
                q += (uint64_t)(v * v);                                                \
                lo = x[i] < lo ? x[i] : lo;                                            \
                hi = x[i] > hi ? x[i] : hi;                                            \
            }                                                                          \
            sum += s;                                                                  \
            sumsq += q;                                                                \
        }                                                                              \
        /* M2 = sumsq - sum^2 / n = (n sumsq - sum^2) / n, exactly */                 \
        __int128 num = (__int128)((unsigned __int128)n * sumsq) - sum * sum;           \
        *out = (moments){.count = n, .mean = (double)sum / (double)n,                  \
                         .m2 = (double)num / (double)n, .min = lo, .max = hi};         \
    }
DEFINE_INT_MOMENTS(int_moments_u8, uint8_t)
DEFINE_INT_MOMENTS(int_moments_i8, int8_t)
DEFINE_INT_MOMENTS(int_moments_u16, uint16_t)
DEFINE_INT_MOMENTS(int_moments_i16, int16_t)

static int small_int_moments(const raster *r, int b, moments *out)
{
    size_t plane = (size_t)r->height * r->width;
    if (!r->native || r->valid || plane == 0)
        return 0;
    const char *p = (const char *)r->native + (size_t)b * plane * raster_type_size(r->type);
    switch (r->type) {
    case RT_U8: int_moments_u8((const uint8_t *)p, plane, out); return 1;
    case RT_I8: int_moments_i8((const int8_t *)p, plane, out); return 1;
    case RT_U16: int_moments_u16((const uint16_t *)p, plane, out); return 1;
    case RT_I16: int_moments_i16((const int16_t *)p, plane, out); return 1;
    default: return 0;
    }
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
    if (!small_int_moments(r, b, out))
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
