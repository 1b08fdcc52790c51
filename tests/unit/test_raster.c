/* Rasters: every layout and sample type GDAL can write, decoded by us and
 * by GDAL (gdal_translate to raw band-sequential ENVI), compared exactly. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "raster.h"
#include "test.h"

#define L7 "tests/data/L7_ETMs.tif"

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    *len = (size_t)ftell(fp);
    rewind(fp);
    unsigned char *b = malloc(*len ? *len : 1);
    if (b && fread(b, 1, *len, fp) != *len) {
        free(b);
        b = NULL;
    }
    fclose(fp);
    return b;
}

/* Reads `tif` ourselves and through GDAL, and compares every sample. */
static void check_against_gdal(const char *tif, raster_type want_type, int want_bands)
{
    const char *raw = test_path("ref.bsq");
    CHECK(sh("gdal_translate -q -of ENVI -co INTERLEAVE=BSQ '%s' '%s'", tif, raw) == 0);
    size_t len;
    unsigned char *ref = slurp(raw, &len);
    CHECK(ref);
    raster r;
    gd_err err;
    raster_opts o = {.keep_native = true};
    int rc = raster_read(tif, &o, &r, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_MSG(r.type == want_type, "%s: type %s", tif, raster_type_name(r.type));
    CHECK(r.bands == want_bands && r.width == 349 && r.height == 352);
    size_t n = (size_t)r.bands * r.height * r.width;
    CHECK_MSG(len == n * raster_type_size(r.type), "%s: GDAL gave %zu bytes", tif, len);
    CHECK_MSG(memcmp(ref, r.native, len) == 0, "%s: samples differ from GDAL's", tif);
    /* float view equals the native values */
    for (size_t i = 0; i < n; i += 997) {
        double v;
        switch (r.type) {
        case RT_U8: v = ((uint8_t *)r.native)[i]; break;
        case RT_U16: v = ((uint16_t *)r.native)[i]; break;
        case RT_I16: v = ((int16_t *)r.native)[i]; break;
        case RT_U32: v = ((uint32_t *)r.native)[i]; break;
        case RT_I32: v = ((int32_t *)r.native)[i]; break;
        case RT_F32: v = ((float *)r.native)[i]; break;
        case RT_F64: v = ((double *)r.native)[i]; break;
        default: v = NAN;
        }
        CHECK((float)v == r.data[i]);
    }
    raster_free(&r);
    free(ref);
}

TEST(raster_l7_matches_gdal)
{
    check_against_gdal(L7, RT_U8, 6);
}

TEST(raster_layouts_match_gdal)
{
    static const struct {
        const char *opts;
        raster_type type;
        int bands;
    } v[] = {
        {"-co TILED=YES -co BLOCKXSIZE=64 -co BLOCKYSIZE=32", RT_U8, 6},
        {"-co INTERLEAVE=BAND -co COMPRESS=LZW -co PREDICTOR=2", RT_U8, 6},
        {"-co INTERLEAVE=PIXEL -co COMPRESS=PACKBITS", RT_U8, 6},
        {"-co TILED=YES -co INTERLEAVE=BAND -co COMPRESS=ZSTD", RT_U8, 6},
        {"-ot UInt16 -scale 0 255 0 65535 -co COMPRESS=DEFLATE -co PREDICTOR=2", RT_U16, 6},
        {"-ot Int16 -scale 0 255 -32768 32767 -co TILED=YES", RT_I16, 6},
        {"-ot UInt32 -scale 0 255 0 4000000000", RT_U32, 6},
        {"-ot Int32 -scale 0 255 -2000000000 2000000000 -co INTERLEAVE=BAND", RT_I32, 6},
        {"-ot Float32 -scale 0 255 0 1 -co COMPRESS=DEFLATE -co PREDICTOR=3", RT_F32, 6},
        {"-ot Float64 -scale 0 255 -1 1 -co TILED=YES -co COMPRESS=LZW", RT_F64, 6},
        {"-b 1 -b 2 -b 3 -co COMPRESS=JPEG -co PHOTOMETRIC=YCBCR", RT_U8, 3},
        {"-b 4 -co NBITS=8 -co COMPRESS=LZMA", RT_U8, 1},
    };
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        const char *out = test_path("variant.tif");
        CHECK_MSG(sh("gdal_translate -q %s '%s' '%s'", v[k].opts, L7, out) == 0, "%s", v[k].opts);
        check_against_gdal(out, v[k].type, v[k].bands);
        if (test_failed()) {
            printf("    (variant: %s)\n", v[k].opts);
            return;
        }
    }
}

TEST(raster_band_names_and_selection)
{
    raster r;
    gd_err err;
    raster_opts o = {.bands = "4,B1,6"};
    CHECK_MSG(raster_read(L7, &o, &r, &err) == 0, "%s", err.msg);
    CHECK(r.bands == 3 && strcmp(r.band_names[0], "B4") == 0 && strcmp(r.band_names[1], "B1") == 0);
    raster all;
    CHECK(raster_read(L7, NULL, &all, &err) == 0);
    size_t plane = (size_t)r.height * r.width;
    CHECK(memcmp(r.data, all.data + 3 * plane, plane * sizeof(float)) == 0);
    CHECK(memcmp(r.data + 2 * plane, all.data + 5 * plane, plane * sizeof(float)) == 0);
    raster_free(&r);
    o.bands = "B7";
    CHECK(raster_read(L7, &o, &r, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "no band 'B7'");
    o.bands = "0";
    CHECK(raster_read(L7, &o, &r, &err) == -1);
    /* GDAL band descriptions become names */
    const char *named = test_path("named.tif");
    CHECK(sh("gdal_translate -q -b 1 -b 2 '%s' '%s' && /usr/bin/python3 -c \"from osgeo import gdal; "
             "ds = gdal.Open('%s', 1); ds.GetRasterBand(1).SetDescription('Blue & green'); "
             "ds = None\"", L7, named, named) == 0);
    CHECK_MSG(raster_read(named, NULL, &r, &err) == 0, "%s", err.msg);
    CHECK(r.bands == 2);
    CHECK_MSG(strcmp(r.band_names[0], "Blue & green") == 0, "name: %s", r.band_names[0]);
    CHECK(strcmp(r.band_names[1], "B2") == 0);
    raster_free(&r);
    raster_free(&all);
}

TEST(raster_bandset_equals_multiband)
{
    char list[1024] = "";
    for (int b = 1; b <= 6; b++) {
        char name[64];
        snprintf(name, sizeof name, "scene_B%d.tif", b);
        CHECK(sh("gdal_translate -q -b %d '%s' '%s'", b, L7, test_path(name)) == 0);
        if (b > 1)
            strcat(list, ",");
        strcat(list, test_path(name));
    }
    raster a, b;
    gd_err err;
    CHECK_MSG(raster_read(list, NULL, &a, &err) == 0, "%s", err.msg);
    CHECK(raster_read(L7, NULL, &b, &err) == 0);
    CHECK(a.bands == 6 && a.height == b.height && a.width == b.width);
    CHECK(memcmp(a.data, b.data, (size_t)6 * a.height * a.width * sizeof(float)) == 0);
    CHECK(strcmp(a.band_names[2], "B3") == 0);
    raster_free(&a);
    /* a directory is a band set too, and bands are chosen by name */
    CHECK(sh("mkdir -p '%s' && cp %s/scene_B*.tif '%s'", test_path("patch"), test_tmpdir(),
             test_path("patch")) == 0);
    raster_opts o = {.bands = "B4,B2", .keep_native = true};
    CHECK_MSG(raster_read(test_path("patch"), &o, &a, &err) == 0, "%s", err.msg);
    size_t plane = (size_t)a.height * a.width;
    CHECK(a.bands == 2 && memcmp(a.data, b.data + 3 * plane, plane * sizeof(float)) == 0);
    CHECK(a.native && ((uint8_t *)a.native)[plane + 5] == (uint8_t)b.data[plane + 5]);
    raster_free(&a);
    raster_free(&b);
}

TEST(raster_bandset_resamples_to_finest)
{
    /* coarse band: a linear ramp v = x + 10 y on 10x10; fine band 20x20 */
    float coarse[100], fine[400];
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 10; x++)
            coarse[y * 10 + x] = (float)(x + 10 * y);
    memset(fine, 0, sizeof fine);
    gd_err err;
    char list[600];
    CHECK(raster_write(test_path("p_B01.tif"), coarse, RT_F32, 1, 10, 10, &err) == 0);
    CHECK(raster_write(test_path("p_B02.tif"), fine, RT_F32, 1, 20, 20, &err) == 0);
    snprintf(list, sizeof list, "%s,%s", test_path("p_B01.tif"), test_path("p_B02.tif"));
    raster r;
    CHECK_MSG(raster_read(list, NULL, &r, &err) == 0, "%s", err.msg);
    CHECK(r.bands == 2 && r.height == 20 && r.width == 20);
    /* interior pixels: bilinear interpolation of a linear function is exact */
    for (int y = 1; y < 19; y++)
        for (int x = 1; x < 19; x++) {
            double cx = (x + 0.5) / 2 - 0.5, cy = (y + 0.5) / 2 - 0.5;
            CHECK_NEAR(r.data[y * 20 + x], cx + 10 * cy, 1e-6);
        }
    raster_free(&r);
    raster_opts o = {.keep_native = true};
    CHECK(raster_read(list, &o, &r, &err) == 0);
    CHECK(r.native == NULL); /* resampled: no native samples */
    raster_free(&r);
}

TEST(raster_nodata_mask)
{
    const char *nd = test_path("nodata.tif");
    CHECK(sh("gdal_translate -q -a_nodata 47 '%s' '%s'", L7, nd) == 0);
    raster r;
    gd_err err;
    CHECK_MSG(raster_read(nd, NULL, &r, &err) == 0, "%s", err.msg);
    CHECK(r.has_nodata && r.nodata == 47 && r.valid);
    size_t n = (size_t)r.bands * r.height * r.width, invalid = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(r.valid[i] == (r.data[i] != 47.0f));
        invalid += !r.valid[i];
    }
    CHECK(invalid > 0);
    raster_free(&r);
    /* NaN in a float file is invalid without any nodata tag */
    float px[6] = {1, NAN, 3, 4, NAN, 6};
    CHECK(raster_write(test_path("nan.tif"), px, RT_F32, 1, 2, 3, &err) == 0);
    CHECK(raster_read(test_path("nan.tif"), NULL, &r, &err) == 0);
    CHECK(!r.has_nodata && r.valid && r.valid[0] == 1 && r.valid[1] == 0 && r.valid[4] == 0);
    raster_free(&r);
}

TEST(raster_write_roundtrip_and_gdal_reads_it)
{
    enum { B = 3, H = 17, W = 23 };
    uint16_t px[B * H * W];
    for (int i = 0; i < B * H * W; i++)
        px[i] = (uint16_t)(i * 37 % 65536);
    gd_err err;
    const char *out = test_path("w16.tif");
    CHECK_MSG(raster_write(out, px, RT_U16, B, H, W, &err) == 0, "%s", err.msg);
    raster r;
    raster_opts o = {.keep_native = true};
    CHECK(raster_read(out, &o, &r, &err) == 0);
    CHECK(r.type == RT_U16 && r.bands == B && r.height == H && r.width == W);
    CHECK(memcmp(r.native, px, sizeof px) == 0);
    raster_free(&r);
    /* GDAL decodes our file to the same samples */
    const char *raw = test_path("w16.bsq");
    CHECK(sh("gdal_translate -q -of ENVI -co INTERLEAVE=BSQ '%s' '%s'", out, raw) == 0);
    size_t len;
    unsigned char *ref = slurp(raw, &len);
    CHECK(ref && len == sizeof px && memcmp(ref, px, len) == 0);
    free(ref);
    /* float to uint8: rounded and clamped */
    float f[4] = {-3.0f, 0.4f, 254.6f, 999.0f};
    raster rf = {.bands = 1, .height = 2, .width = 2, .data = f};
    CHECK(raster_write_float(test_path("u8.tif"), &rf, RT_U8, &err) == 0);
    CHECK(raster_read(test_path("u8.tif"), &o, &r, &err) == 0);
    uint8_t *u = r.native;
    CHECK(r.type == RT_U8 && u[0] == 0 && u[1] == 0 && u[2] == 255 && u[3] == 255);
    raster_free(&r);
    CHECK(raster_write(test_path("bad.tif"), px, RT_I16, 1, 2, 2, &err) == -1);
}

TEST(raster_bad_files_are_errors)
{
    raster r;
    gd_err err;
    CHECK(raster_read(test_path("missing.tif"), NULL, &r, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "No such file");
    CHECK(sh("touch '%s'", test_path("empty.tif")) == 0);
    CHECK(raster_read(test_path("empty.tif"), NULL, &r, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "empty file");
    CHECK(sh("echo 'not a tiff at all' > '%s'", test_path("text.tif")) == 0);
    CHECK(raster_read(test_path("text.tif"), NULL, &r, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "not a readable TIFF");
    CHECK(raster_read(test_tmpdir(), NULL, &r, &err) == -1); /* a directory without TIFFs */
    /* truncated at many points: an error, or (once the cut is past the
     * full-resolution data, before the overviews) exactly the same data */
    size_t len;
    unsigned char *buf = slurp(L7, &len);
    CHECK(buf);
    raster whole;
    CHECK(raster_read_mem(buf, len, "whole", NULL, &whole, &err) == 0);
    size_t bytes = (size_t)whole.bands * whole.height * whole.width * sizeof(float);
    int errors = 0;
    for (size_t cut = 0; cut < len; cut += len / 97 + 1) {
        int rc = raster_read_mem(buf, cut, "cut", NULL, &r, &err);
        if (rc == 0) {
            CHECK_MSG(memcmp(r.data, whole.data, bytes) == 0, "cut at %zu gave other data", cut);
            raster_free(&r);
        } else {
            CHECK_STR_CONTAINS(err.msg, "cut: ");
        }
        errors += rc == -1;
    }
    CHECK_MSG(errors >= 50, "only %d of 98 truncations were errors", errors);
    raster_free(&whole);
    raster_opts small = {.max_samples = 1000};
    CHECK(raster_read_mem(buf, len, "whole", &small, &r, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "larger than the limit of 1000 samples");
    free(buf);
}
