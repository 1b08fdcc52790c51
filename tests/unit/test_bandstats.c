/* Band statistics against direct computations: long double sums for the
 * moments, a full sort for percentiles. */
#include <stdlib.h>
#include <string.h>

#include "bandstats.h"
#include "rng.h"
#include "test.h"

static raster make_band(const float *v, int h, int w)
{
    raster r = {.bands = 1, .height = h, .width = w, .type = RT_F32};
    r.data = malloc((size_t)h * w * sizeof *r.data);
    memcpy(r.data, v, (size_t)h * w * sizeof *r.data);
    return r;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile(x, p) by sorting everything */
static double sorted_percentile(const float *x, size_t n, double p)
{
    double *s = malloc(n * sizeof *s);
    for (size_t i = 0; i < n; i++)
        s[i] = x[i];
    qsort(s, n, sizeof *s, cmp_d);
    double pos = p / 100 * (double)(n - 1);
    size_t lo = (size_t)pos, hi = lo + 1 < n ? lo + 1 : lo;
    double r = s[lo] + (pos - (double)lo) * (s[hi] - s[lo]);
    free(s);
    return r;
}

static void percentiles_of(const raster *r, const double *levels, int n, double *out)
{
    moments m;
    band_moments(r, 0, &m);
    histogram fine;
    histogram_init(&fine, m.min, m.max, PCT_BINS);
    histogram_add_band(&fine, r, 0);
    pct_plan p;
    percentile_plan(&p, &fine, levels, n);
    percentile_collect(&p, r, 0);
    percentile_finish(&p, out);
    percentile_free(&p);
}

TEST(bandstats_moments_match_long_double)
{
    enum { H = 301, W = 217 };
    static float v[H * W];
    rng g;
    rng_init(&g, 1, 2, 3, 4);
    for (int i = 0; i < H * W; i++) /* large offset, small spread: the hard case */
        v[i] = (float)(1e4 + rng_normal(&g) * 0.01);
    raster r = make_band(v, H, W);
    moments m;
    band_moments(&r, 0, &m);
    long double sum = 0, sq = 0;
    for (int i = 0; i < H * W; i++)
        sum += v[i];
    long double mean = sum / (H * W);
    for (int i = 0; i < H * W; i++)
        sq += ((long double)v[i] - mean) * ((long double)v[i] - mean);
    CHECK(m.count == (uint64_t)H * W);
    CHECK_NEAR(m.mean, (double)mean, 1e-15);
    CHECK_NEAR(moments_std(&m), sqrtl(sq / (H * W)), 1e-9);
    raster_free(&r);
}

TEST(bandstats_merge_is_split_independent)
{
    enum { N = 10000 };
    static float v[N];
    rng g;
    rng_init(&g, 9, 0, 0, 0);
    for (int i = 0; i < N; i++)
        v[i] = (float)rng_range(&g, -5, 100);
    raster whole = make_band(v, 100, 100);
    moments all;
    band_moments(&whole, 0, &all);
    /* the same data as 1 + 37 + ... row pieces merged in order */
    moments merged;
    moments_init(&merged);
    for (int y = 0; y < 100;) {
        int rows = 1 + y % 37;
        if (y + rows > 100)
            rows = 100 - y;
        raster part = make_band(v + y * 100, rows, 100);
        moments pm;
        band_moments(&part, 0, &pm);
        moments_merge(&merged, &pm);
        raster_free(&part);
        y += rows;
    }
    CHECK(merged.count == all.count && merged.min == all.min && merged.max == all.max);
    CHECK_NEAR(merged.mean, all.mean, 1e-14);
    CHECK_NEAR(moments_std(&merged), moments_std(&all), 1e-12);
    raster_free(&whole);
}

TEST(bandstats_exact_percentiles_on_hard_distributions)
{
    enum { N = 20000 };
    static float v[N];
    rng g;
    rng_init(&g, 5, 0, 0, 0);
    const double levels[] = {0, 1, 2, 25, 50, 75, 98, 99.9, 100};
    /* heavy tail: most values crowd into the first few of 65536 bins */
    for (int i = 0; i < N; i++)
        v[i] = (float)exp(rng_normal(&g) * 4);
    raster r = make_band(v, 100, 200);
    double got[9];
    percentiles_of(&r, levels, 9, got);
    for (int k = 0; k < 9; k++)
        CHECK_MSG(got[k] == sorted_percentile(v, N, levels[k]), "p%g: %.17g vs %.17g", levels[k],
                  got[k], sorted_percentile(v, N, levels[k]));
    raster_free(&r);
    /* many ties, and a constant band */
    for (int i = 0; i < N; i++)
        v[i] = (float)(rng_below(&g, 5));
    r = make_band(v, 100, 200);
    percentiles_of(&r, levels, 9, got);
    for (int k = 0; k < 9; k++)
        CHECK(got[k] == sorted_percentile(v, N, levels[k]));
    raster_free(&r);
    for (int i = 0; i < N; i++)
        v[i] = 3.25f;
    r = make_band(v, 100, 200);
    percentiles_of(&r, levels, 9, got);
    for (int k = 0; k < 9; k++)
        CHECK(got[k] == 3.25);
    raster_free(&r);
}

TEST(bandstats_mask_and_nan_excluded)
{
    float v[6] = {1, 2, NAN, 4, 100, 6};
    raster r = make_band(v, 2, 3);
    uint8_t valid[6] = {1, 1, 1, 1, 0, 1};
    r.valid = malloc(6);
    memcpy(r.valid, valid, 6);
    moments m;
    band_moments(&r, 0, &m);
    CHECK(m.count == 4 && m.min == 1 && m.max == 6);
    CHECK_NEAR(m.mean, 13.0 / 4, 1e-15);
    raster_free(&r);
    /* empty: NaN std, no crash */
    moments e;
    moments_init(&e);
    CHECK(isnan(moments_std(&e)));
}

TEST(bandstats_integer_path_equals_float64_path)
{
    enum { H = 123, W = 457 };
    static float f[H * W];
    static uint16_t u[H * W];
    static int16_t s[H * W];
    rng g;
    rng_init(&g, 77, 0, 0, 0);
    for (int i = 0; i < H * W; i++) {
        u[i] = (uint16_t)rng_below(&g, 65536);
        f[i] = u[i];
    }
    raster r = {.bands = 1, .height = H, .width = W, .type = RT_U16, .data = f, .native = u};
    raster viafloat = r;
    viafloat.native = NULL;
    moments a, b;
    band_moments(&r, 0, &a);        /* exact integer sums */
    band_moments(&viafloat, 0, &b); /* float64 blocks */
    CHECK(a.count == b.count && a.min == b.min && a.max == b.max);
    CHECK_NEAR(a.mean, b.mean, 1e-13);
    CHECK_NEAR(moments_std(&a), moments_std(&b), 1e-12);
    for (int i = 0; i < H * W; i++) {
        s[i] = (int16_t)((int)rng_below(&g, 65536) - 32768);
        f[i] = s[i];
    }
    r.type = RT_I16;
    r.native = s;
    band_moments(&r, 0, &a);
    band_moments(&viafloat, 0, &b);
    CHECK(a.min == b.min && a.max == b.max && a.min < 0);
    CHECK_NEAR(a.mean, b.mean, 1e-12);
    CHECK_NEAR(moments_std(&a), moments_std(&b), 1e-12);
}
