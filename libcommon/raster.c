/* raster.c: GeoTIFF reading and writing on libtiff.  See raster.h.
 *
 * Every file is read through TIFFReadEncodedStrip/Tile, so one path
 * handles strips and tiles, chunky and planar layouts and every codec
 * libtiff was built with.  Sizes from the file are checked before any
 * allocation: the raster against max_samples, each strip or tile against
 * MAX_BLOCK_BYTES, and each decoded block against what it must hold. */
#include "raster.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include "io.h"

#define MAX_BLOCK_BYTES ((tmsize_t)1 << 28)   /* one strip or tile: 256 MiB */
#define MAX_BANDSET_FILES 256

static const struct {
    const char *name;
    size_t size;
} types[RT_COUNT] = {
    [RT_U8] = {"uint8", 1},   [RT_I8] = {"int8", 1},     [RT_U16] = {"uint16", 2},
    [RT_I16] = {"int16", 2},  [RT_U32] = {"uint32", 4},  [RT_I32] = {"int32", 4},
    [RT_F32] = {"float32", 4}, [RT_F64] = {"float64", 8},
};

const char *raster_type_name(raster_type t) { return t < RT_COUNT ? types[t].name : "?"; }
size_t raster_type_size(raster_type t) { return t < RT_COUNT ? types[t].size : 0; }

void raster_free(raster *r)
{
    if (!r)
        return;
    free(r->data);
    free(r->valid);
    free(r->native);
    for (int b = 0; r->band_names && b < r->bands; b++)
        free(r->band_names[b]);
    free(r->band_names);
    memset(r, 0, sizeof *r);
}

/* ---- libtiff errors into gd_err ----------------------------------------- */

typedef struct {
    char text[512];
} tiff_msgs;

static int on_tiff_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    tiff_msgs *m = user;
    if (m && !m->text[0]) /* the first error is the cause; later ones follow from it */
        vsnprintf(m->text, sizeof m->text, fmt, ap);
    return 1;
}

static int on_tiff_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    return 1; /* unknown tags and the like: not the user's problem */
}

static TIFFOpenOptions *open_options(tiff_msgs *msgs)
{
    TIFFOpenOptions *o = TIFFOpenOptionsAlloc();
    if (!o)
        return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(o, on_tiff_error, msgs);
    TIFFOpenOptionsSetWarningHandlerExtR(o, on_tiff_warning, msgs);
    TIFFOpenOptionsSetMaxSingleMemAlloc(o, MAX_BLOCK_BYTES);
    return o;
}

static int tiff_fail(gd_err *err, const char *name, const tiff_msgs *m, const char *what)
{
    if (m->text[0])
        return gd_errf(err, "%s: %s: %s", name, what, m->text);
    return gd_errf(err, "%s: %s", name, what);
}

/* ---- the layout of one file --------------------------------------------- */

typedef struct {
    uint32_t width, height;
    uint16_t spp, bps, format, planar, photometric, compression;
    raster_type type;
    int tiled;
    uint32_t block_w, block_h;   /* tile size, or width x rows-per-strip */
} layout;

static int sample_type(uint16_t format, uint16_t bps, raster_type *t)
{
    if (format == SAMPLEFORMAT_UINT && bps == 8) *t = RT_U8;
    else if (format == SAMPLEFORMAT_INT && bps == 8) *t = RT_I8;
    else if (format == SAMPLEFORMAT_UINT && bps == 16) *t = RT_U16;
    else if (format == SAMPLEFORMAT_INT && bps == 16) *t = RT_I16;
    else if (format == SAMPLEFORMAT_UINT && bps == 32) *t = RT_U32;
    else if (format == SAMPLEFORMAT_INT && bps == 32) *t = RT_I32;
    else if (format == SAMPLEFORMAT_IEEEFP && bps == 32) *t = RT_F32;
    else if (format == SAMPLEFORMAT_IEEEFP && bps == 64) *t = RT_F64;
    else return -1;
    return 0;
}

static int read_layout(TIFF *tif, const char *name, layout *L, size_t max_samples, gd_err *err)
{
    memset(L, 0, sizeof *L);
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &L->width) ||
        !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &L->height))
        return gd_errf(err, "%s: no image size", name);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &L->spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &L->bps);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &L->format);
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &L->planar);
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &L->compression);
    if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &L->photometric))
        L->photometric = PHOTOMETRIC_MINISBLACK;
    if (L->width == 0 || L->height == 0 || L->spp == 0)
        return gd_errf(err, "%s: empty image (%ux%u, %u bands)", name, L->width, L->height, L->spp);
    if ((double)L->width * L->height * L->spp > (double)max_samples)
        return gd_errf(err, "%s: %ux%u with %u bands is larger than the limit of %zu samples",
                       name, L->width, L->height, L->spp, max_samples);
    if (sample_type(L->format, L->bps, &L->type) < 0)
        return gd_errf(err, "%s: unsupported samples (%u bits, sample format %u)", name, L->bps,
                       L->format);
    if (L->photometric == PHOTOMETRIC_YCBCR && L->compression == COMPRESSION_JPEG) {
        /* let libjpeg convert to RGB, as GDAL does */
        if (!TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB))
            return gd_errf(err, "%s: cannot decode JPEG YCbCr", name);
    } else if (L->photometric == PHOTOMETRIC_YCBCR) {
        return gd_errf(err, "%s: subsampled YCbCr without JPEG is not supported", name);
    }
    L->tiled = TIFFIsTiled(tif);
    if (L->tiled) {
        if (!TIFFGetField(tif, TIFFTAG_TILEWIDTH, &L->block_w) ||
            !TIFFGetField(tif, TIFFTAG_TILELENGTH, &L->block_h) || !L->block_w || !L->block_h)
            return gd_errf(err, "%s: tiled without a tile size", name);
    } else {
        uint32_t rps = 0;
        TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
        L->block_w = L->width;
        L->block_h = rps == 0 || rps > L->height ? L->height : rps;
    }
    return 0;
}

/* ---- copying decoded blocks into the raster ----------------------------- */

/* One row of a decoded block into the raster: `nsamp` interleaved samples
 * per pixel, sample k going to plane k of dst (float) and of nat (the
 * native samples, when kept).  One loop per sample type, so the
 * conversion is not a switch per sample. */
#define DEFINE_ROW(NAME, T)                                                            \
    static void NAME(const unsigned char *row, int nsamp, uint32_t w, float *dst,      \
                     unsigned char *nat, size_t plane)                                 \
    {                                                                                  \
        for (int k = 0; k < nsamp; k++) {                                              \
            float *out = dst + (size_t)k * plane;                                      \
            T *nout = nat ? (T *)(void *)nat + (size_t)k * plane : NULL;               \
            for (uint32_t x = 0; x < w; x++) {                                         \
                T v;                                                                   \
                memcpy(&v, row + ((size_t)x * (size_t)nsamp + (size_t)k) * sizeof v,   \
                       sizeof v);                                                      \
                out[x] = (float)v;                                                     \
                if (nout)                                                              \
                    nout[x] = v;                                                       \
            }                                                                          \
        }                                                                              \
    }
DEFINE_ROW(row_u8, uint8_t)
DEFINE_ROW(row_i8, int8_t)
DEFINE_ROW(row_u16, uint16_t)
DEFINE_ROW(row_i16, int16_t)
DEFINE_ROW(row_u32, uint32_t)
DEFINE_ROW(row_i32, int32_t)
DEFINE_ROW(row_f32, float)
DEFINE_ROW(row_f64, double)

typedef void (*row_fn)(const unsigned char *, int, uint32_t, float *, unsigned char *, size_t);
static const row_fn put_row[RT_COUNT] = {
    [RT_U8] = row_u8,   [RT_I8] = row_i8,   [RT_U16] = row_u16, [RT_I16] = row_i16,
    [RT_U32] = row_u32, [RT_I32] = row_i32, [RT_F32] = row_f32, [RT_F64] = row_f64,
};

typedef struct {
    const layout *L;
    float *data;
    unsigned char *native;    /* may be NULL */
} sink;

/* A decoded block covers image columns [x0, x0+bw) and rows [y0, y0+bh);
 * it holds `nsamp` interleaved samples per pixel, the first being band
 * `band0`. */
static void put_block(const sink *s, const unsigned char *blk, uint32_t x0, uint32_t y0,
                      uint32_t bw, uint32_t bh, int nsamp, int band0)
{
    const layout *L = s->L;
    size_t sz = raster_type_size(L->type);
    uint32_t w = x0 + bw > L->width ? L->width - x0 : bw;
    uint32_t h = y0 + bh > L->height ? L->height - y0 : bh;
    size_t plane = (size_t)L->width * L->height;
    for (uint32_t y = 0; y < h; y++) {
        const unsigned char *row = blk + (size_t)y * bw * (size_t)nsamp * sz;
        size_t base = (size_t)band0 * plane + (size_t)(y0 + y) * L->width + x0;
        put_row[L->type](row, nsamp, w, s->data + base, s->native ? s->native + base * sz : NULL,
                         plane);
    }
}

static int read_blocks(TIFF *tif, const char *name, const layout *L, const sink *s,
                       const tiff_msgs *msgs, gd_err *err)
{
    int separate = L->planar == PLANARCONFIG_SEPARATE && L->spp > 1;
    int nsamp = separate ? 1 : L->spp;
    size_t sz = raster_type_size(L->type);
    /* what one block must decode to */
    tmsize_t need = (tmsize_t)L->block_w * L->block_h * nsamp * (tmsize_t)sz;
    tmsize_t bufsize = L->tiled ? TIFFTileSize(tif) : TIFFStripSize(tif);
    if (need <= 0 || need > MAX_BLOCK_BYTES || bufsize <= 0 || bufsize > MAX_BLOCK_BYTES)
        return gd_errf(err, "%s: unreasonable %s size (%ux%u)", name, L->tiled ? "tile" : "strip",
                       L->block_w, L->block_h);
    if (bufsize < need)
        bufsize = need;
    unsigned char *buf = malloc((size_t)bufsize);
    if (!buf)
        return gd_errf(err, "%s: out of memory for a %lld-byte block", name, (long long)bufsize);
    int rc = 0;
    int planes = separate ? L->spp : 1;
    for (int p = 0; rc == 0 && p < planes; p++)
        for (uint32_t y = 0; rc == 0 && y < L->height; y += L->block_h)
            for (uint32_t x = 0; rc == 0 && x < L->width; x += L->block_w) {
                tmsize_t got;
                /* rows actually present in this block: the last strip is short */
                uint32_t rows = L->tiled || y + L->block_h <= L->height ? L->block_h : L->height - y;
                tmsize_t want = (tmsize_t)L->block_w * rows * nsamp * (tmsize_t)sz;
                if (L->tiled)
                    got = TIFFReadEncodedTile(tif, TIFFComputeTile(tif, x, y, 0, (uint16_t)p), buf,
                                              bufsize);
                else
                    got = TIFFReadEncodedStrip(tif, TIFFComputeStrip(tif, y, (uint16_t)p), buf,
                                               want);
                if (got < 0)
                    rc = tiff_fail(err, name, msgs, "cannot decode the image data");
                else if (got < want)
                    rc = gd_errf(err, "%s: %s at row %u holds %lld bytes, %lld expected", name,
                                 L->tiled ? "tile" : "strip", y, (long long)got, (long long)want);
                else
                    put_block(s, buf, x, y, L->block_w, rows, nsamp, p);
            }
    free(buf);
    return rc;
}

/* ---- band names and nodata from GDAL's tags ----------------------------- */

static char *xml_text(const char *start, const char *end)
{
    size_t n = (size_t)(end - start);
    char *s = malloc(n + 1), *o = s;
    if (!s)
        return NULL;
    for (const char *p = start; p < end; p++) {
        static const struct { const char *ent; char c; } ents[] = {
            {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
        int done = 0;
        for (size_t k = 0; k < sizeof ents / sizeof ents[0] && !done; k++) {
            size_t el = strlen(ents[k].ent);
            if ((size_t)(end - p) >= el && memcmp(p, ents[k].ent, el) == 0) {
                *o++ = ents[k].c;
                p += el - 1;
                done = 1;
            }
        }
        if (!done)
            *o++ = *p;
    }
    *o = 0;
    return s;
}

/* GDAL writes band descriptions as
 * <Item name="DESCRIPTION" sample="0" role="description">Blue</Item>. */
/* GDAL's ASCII tags are read with a count (libtiff passes it for tags
 * of variable length); the copy is NUL-terminated whatever the file says. */
static char *ascii_tag(TIFF *tif, uint32_t tag)
{
    uint32_t count = 0; /* a 16-bit count lands in the low bytes: zero the rest */
    const char *s = NULL;
    if (!TIFFGetField(tif, tag, &count, &s) || !s)
        return NULL;
    return strndup(s, count);
}

static void gdal_band_names(TIFF *tif, char **names, int bands)
{
    char *xml = ascii_tag(tif, TIFFTAG_GDAL_METADATA);
    if (!xml)
        return;
    for (const char *p = strstr(xml, "<Item"); p; p = strstr(p + 1, "<Item")) {
        const char *close = strchr(p, '>');
        if (!close)
            break;
        size_t taglen = (size_t)(close - p);
        char tag[256];
        if (taglen >= sizeof tag)
            continue;
        memcpy(tag, p, taglen);
        tag[taglen] = 0;
        const char *sample = strstr(tag, "sample=\"");
        if (!strstr(tag, "name=\"DESCRIPTION\"") || !strstr(tag, "role=\"description\"") || !sample)
            continue;
        long b = strtol(sample + 8, NULL, 10);
        const char *end = strstr(close, "</Item>");
        if (b < 0 || b >= bands || !end || end == close + 1)
            continue;
        /* GDAL escapes the description once as metadata and once more as
         * XML, so it takes two rounds of unescaping */
        char *once = xml_text(close + 1, end);
        char *name = once ? xml_text(once, once + strlen(once)) : NULL;
        free(once);
        if (name) {
            free(names[b]);
            names[b] = name;
        }
    }
    free(xml);
}

static int read_nodata(TIFF *tif, double *nodata)
{
    char *s = ascii_tag(tif, TIFFTAG_GDAL_NODATA);
    if (!s)
        return 0;
    char *end;
    double v = strtod(s, &end);
    int ok = end != s;
    free(s);
    if (ok)
        *nodata = v;
    return ok;
}

/* valid = not nodata and not NaN; dropped when everything is valid. */
static int build_mask(raster *r, gd_err *err, const char *name)
{
    int floating = r->type == RT_F32 || r->type == RT_F64;
    if (!r->has_nodata && !floating)
        return 0;
    size_t n = (size_t)r->bands * r->height * r->width;
    r->valid = malloc(n ? n : 1);
    if (!r->valid)
        return gd_errf(err, "%s: out of memory for the nodata mask", name);
    float nd = (float)r->nodata;
    size_t invalid = 0;
    for (size_t i = 0; i < n; i++) {
        float v = r->data[i];
        int bad = isnan(v) || (r->has_nodata && (v == nd || (isnan(nd) && isnan(v))));
        r->valid[i] = !bad;
        invalid += bad;
    }
    if (invalid == 0) {
        free(r->valid);
        r->valid = NULL;
    }
    return 0;
}

int raster_set_nodata(raster *r, double nodata, gd_err *err)
{
    free(r->valid);
    r->valid = NULL;
    r->has_nodata = true;
    r->nodata = nodata;
    return build_mask(r, err, "nodata");
}

/* ---- one TIFF file ------------------------------------------------------- */

static size_t limit_of(const raster_opts *o)
{
    return o && o->max_samples ? o->max_samples : RASTER_DEFAULT_MAX_SAMPLES;
}

static int read_tiff(TIFF *tif, const char *name, const raster_opts *opts, const tiff_msgs *msgs,
                     raster *out, gd_err *err)
{
    layout L;
    if (read_layout(tif, name, &L, limit_of(opts), err) < 0)
        return -1;
    size_t n = (size_t)L.spp * L.height * L.width;
    raster r = {.bands = L.spp, .height = (int)L.height, .width = (int)L.width, .type = L.type};
    r.data = malloc(n * sizeof *r.data);
    if (opts && opts->keep_native)
        r.native = malloc(n * raster_type_size(L.type));
    r.band_names = calloc(L.spp, sizeof *r.band_names);
    if (!r.data || !r.band_names || (opts && opts->keep_native && !r.native)) {
        raster_free(&r);
        return gd_errf(err, "%s: out of memory for %zu samples", name, n);
    }
    sink s = {.L = &L, .data = r.data, .native = r.native};
    if (read_blocks(tif, name, &L, &s, msgs, err) < 0) {
        raster_free(&r);
        return -1;
    }
    gdal_band_names(tif, r.band_names, r.bands);
    for (int b = 0; b < r.bands; b++) {
        char buf[32];
        snprintf(buf, sizeof buf, "B%d", b + 1);
        if (!r.band_names[b] && !(r.band_names[b] = strdup(buf))) {
            raster_free(&r);
            return gd_errf(err, "%s: out of memory", name);
        }
    }
    r.has_nodata = read_nodata(tif, &r.nodata);
    if (build_mask(&r, err, name) < 0) {
        raster_free(&r);
        return -1;
    }
    *out = r;
    return 0;
}

/* Reads an opened TIFF (NULL: opening failed) and closes it. */
static int read_opened(TIFF *tif, const char *name, const raster_opts *opts, const tiff_msgs *msgs,
                       raster *out, gd_err *err)
{
    if (!tif)
        return tiff_fail(err, name, msgs, "not a readable TIFF");
    int rc = read_tiff(tif, name, opts, msgs, out, err);
    TIFFClose(tif);
    return rc;
}

static int read_file(const char *path, const raster_opts *opts, raster *out, gd_err *err)
{
    tiff_msgs msgs = {{0}};
    struct stat st;
    if (stat(path, &st) < 0)
        return gd_errno(err, path);
    if (!S_ISREG(st.st_mode))
        return gd_errf(err, "%s: not a regular file", path);
    if (st.st_size == 0)
        return gd_errf(err, "%s: empty file", path);
    TIFFOpenOptions *o = open_options(&msgs);
    if (!o)
        return gd_errf(err, "%s: out of memory", path);
    TIFF *tif = TIFFOpenExt(path, "r", o);
    TIFFOpenOptionsFree(o);
    return read_opened(tif, path, opts, &msgs, out, err);
}

/* ---- reading from memory ------------------------------------------------- */

typedef struct {
    const unsigned char *buf;
    toff_t len, pos;
} memfile;

static tmsize_t mem_read(thandle_t h, void *dst, tmsize_t n)
{
    memfile *m = (memfile *)h;
    if (n < 0)
        return -1;
    toff_t left = m->pos < m->len ? m->len - m->pos : 0;
    toff_t k = (toff_t)n < left ? (toff_t)n : left;
    memcpy(dst, m->buf + m->pos, (size_t)k);
    m->pos += k;
    return (tmsize_t)k;
}

static tmsize_t mem_write(thandle_t h, void *src, tmsize_t n) { return -1; }

static toff_t mem_seek(thandle_t h, toff_t off, int whence)
{
    memfile *m = (memfile *)h;
    toff_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->len : 0;
    if (off > UINT64_MAX - base)
        return (toff_t)-1;
    m->pos = base + off;
    return m->pos;
}

static int mem_close(thandle_t h) { return 0; }
static toff_t mem_size(thandle_t h) { return ((memfile *)h)->len; }
static int mem_map(thandle_t h, void **base, toff_t *size) { return 0; }
static void mem_unmap(thandle_t h, void *base, toff_t size) {}

int raster_read_mem(const void *buf, size_t len, const char *name, const raster_opts *opts,
                    raster *out, gd_err *err)
{
    memset(out, 0, sizeof *out);
    memfile m = {.buf = buf, .len = len};
    tiff_msgs msgs = {{0}};
    TIFFOpenOptions *o = open_options(&msgs);
    if (!o)
        return gd_errf(err, "%s: out of memory", name);
    TIFF *tif = TIFFClientOpenExt(name, "rm", (thandle_t)&m, mem_read, mem_write, mem_seek,
                                  mem_close, mem_size, mem_map, mem_unmap, o);
    TIFFOpenOptionsFree(o);
    return read_opened(tif, name, opts, &msgs, out, err);
}

/* ---- band selection ------------------------------------------------------ */

/* Resolves a band spec to indices into names[0..n).  Returns the count,
 * or -1 with err naming the unknown band. */
static int resolve_bands(const char *spec, char *const *names, int n, int *idx, int max,
                         const char *where, gd_err *err)
{
    char *copy = strdup(spec);
    if (!copy)
        return gd_errf(err, "%s: out of memory", where);
    int count = 0, rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long k = strtol(tok, &end, 10);
        int found = -1;
        if (*end == 0 && end != tok) {
            if (k >= 1 && k <= n)
                found = (int)k - 1;
        } else {
            for (int b = 0; b < n && found < 0; b++)
                if (strcmp(names[b], tok) == 0)
                    found = b;
        }
        if (found < 0)
            rc = gd_errf(err, "%s: no band '%s' (it has %d: %s%s)", where, tok, n, names[0],
                         n > 1 ? ", ..." : "");
        else if (count == max)
            rc = gd_errf(err, "%s: more than %d bands asked for", where, max);
        else
            idx[count++] = found;
    }
    free(copy);
    if (rc == 0 && count == 0)
        rc = gd_errf(err, "%s: empty band list", where);
    return rc < 0 ? -1 : count;
}

/* Keeps bands idx[0..k) of r, in that order. */
static int subset_bands(raster *r, const int *idx, int k, gd_err *err, const char *where)
{
    size_t plane = (size_t)r->height * r->width, sz = raster_type_size(r->type);
    raster s = {.bands = k, .height = r->height, .width = r->width, .type = r->type,
                .has_nodata = r->has_nodata, .nodata = r->nodata};
    s.data = malloc((size_t)k * plane * sizeof *s.data);
    s.band_names = calloc((size_t)k, sizeof *s.band_names);
    if (r->native)
        s.native = malloc((size_t)k * plane * sz);
    if (r->valid)
        s.valid = malloc((size_t)k * plane);
    int oom = !s.data || !s.band_names || (r->native && !s.native) || (r->valid && !s.valid);
    for (int b = 0; !oom && b < k; b++) {
        memcpy(s.data + b * plane, r->data + idx[b] * plane, plane * sizeof *s.data);
        if (s.native)
            memcpy((char *)s.native + b * plane * sz, (char *)r->native + idx[b] * plane * sz,
                   plane * sz);
        if (s.valid)
            memcpy(s.valid + b * plane, r->valid + idx[b] * plane, plane);
        oom = !(s.band_names[b] = strdup(r->band_names[idx[b]]));
    }
    if (oom) {
        raster_free(&s);
        return gd_errf(err, "%s: out of memory", where);
    }
    raster_free(r);
    *r = s;
    return 0;
}

/* ---- band sets ----------------------------------------------------------- */

/* "dir/S2A_..._B02.tif" -> "B02" */
static char *band_name_from_path(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    const char *us = memrchr(base, '_', n);
    if (us && us + 1 < base + n) {
        n -= (size_t)(us + 1 - base);
        base = us + 1;
    }
    return strndup(base, n);
}

/* Bilinear resampling of one band to (h, w), pixel centres aligned;
 * a nodata neighbour makes the output invalid. */
static void resample_band(const float *src, const uint8_t *svalid, int sh, int sw, float *dst,
                          uint8_t *dvalid, int h, int w)
{
    for (int y = 0; y < h; y++) {
        double fy = ((double)y + 0.5) * sh / h - 0.5;
        if (fy < 0) fy = 0;
        if (fy > sh - 1) fy = sh - 1;
        int y0 = (int)fy, y1 = y0 + 1 < sh ? y0 + 1 : y0;
        double wy = fy - y0;
        for (int x = 0; x < w; x++) {
            double fx = ((double)x + 0.5) * sw / w - 0.5;
            if (fx < 0) fx = 0;
            if (fx > sw - 1) fx = sw - 1;
            int x0 = (int)fx, x1 = x0 + 1 < sw ? x0 + 1 : x0;
            double wx = fx - x0;
            size_t a = (size_t)y0 * sw + x0, b = (size_t)y0 * sw + x1;
            size_t c = (size_t)y1 * sw + x0, d = (size_t)y1 * sw + x1;
            double v = (1 - wy) * ((1 - wx) * src[a] + wx * src[b]) +
                       wy * ((1 - wx) * src[c] + wx * src[d]);
            dst[(size_t)y * w + x] = (float)v;
            if (dvalid)
                dvalid[(size_t)y * w + x] =
                    !svalid || (svalid[a] && svalid[b] && svalid[c] && svalid[d]);
        }
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_tiff_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".tif") == 0 || strcasecmp(dot, ".tiff") == 0);
}

/* The files of a band set: a directory's TIFFs in name order, or the
 * comma-separated list. */
static int bandset_files(const char *sample, int is_dir, char ***out, int *n, gd_err *err)
{
    char **files = calloc(MAX_BANDSET_FILES, sizeof *files);
    int count = 0, rc = 0;
    if (!files)
        return gd_errf(err, "%s: out of memory", sample);
    if (is_dir) {
        DIR *d = opendir(sample);
        if (!d) {
            free(files);
            return gd_errno(err, sample);
        }
        struct dirent *e;
        while (rc == 0 && (e = readdir(d))) {
            if (e->d_name[0] == '.' || !has_tiff_ext(e->d_name))
                continue;
            if (count == MAX_BANDSET_FILES)
                rc = gd_errf(err, "%s: more than %d TIFF files", sample, MAX_BANDSET_FILES);
            else if (asprintf(&files[count], "%s/%s", sample, e->d_name) < 0)
                rc = gd_errf(err, "%s: out of memory", sample);
            else
                count++;
        }
        closedir(d);
        if (rc == 0 && count == 0)
            rc = gd_errf(err, "%s: directory holds no .tif files", sample);
        qsort(files, (size_t)count, sizeof *files, cmp_str);
    } else {
        char *copy = strdup(sample), *save = NULL;
        for (char *tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && rc == 0;
             tok = strtok_r(NULL, ",", &save)) {
            if (count == MAX_BANDSET_FILES)
                rc = gd_errf(err, "%s: more than %d files", sample, MAX_BANDSET_FILES);
            else if (!(files[count++] = strdup(tok)))
                rc = gd_errf(err, "out of memory");
        }
        if (!copy)
            rc = gd_errf(err, "out of memory");
        free(copy);
    }
    *out = files;
    *n = count;
    return rc;
}

static void free_files(char **files, int n)
{
    for (int k = 0; k < n; k++)
        free(files[k]);
    free(files);
}

static int read_bandset(const char *sample, int is_dir, const raster_opts *opts, raster *out,
                        gd_err *err)
{
    char **files = NULL;
    int nfiles = 0;
    if (bandset_files(sample, is_dir, &files, &nfiles, err) < 0) {
        free_files(files, nfiles);
        return -1;
    }
    /* choose the bands by file name before reading anything */
    char **names = calloc((size_t)nfiles, sizeof *names);
    int *idx = malloc((size_t)nfiles * sizeof *idx);
    int nbands = nfiles, rc = 0;
    for (int k = 0; names && k < nfiles; k++)
        if (!(names[k] = band_name_from_path(files[k])))
            rc = gd_errf(err, "out of memory");
    if (!names || !idx)
        rc = gd_errf(err, "out of memory");
    if (rc == 0 && opts && opts->bands)
        nbands = resolve_bands(opts->bands, names, nfiles, idx, nfiles, sample, err);
    else
        for (int k = 0; idx && k < nfiles; k++)
            idx[k] = k;
    raster *parts = nbands > 0 ? calloc((size_t)nbands, sizeof *parts) : NULL;
    if (rc == 0 && nbands > 0 && !parts)
        rc = gd_errf(err, "out of memory");
    if (nbands < 0)
        rc = -1;
    raster_opts one = opts ? *opts : (raster_opts){0};
    one.bands = NULL;
    int best = 0;
    for (int k = 0; rc == 0 && k < nbands; k++) {
        rc = read_file(files[idx[k]], &one, &parts[k], err);
        if (rc == 0 && parts[k].bands != 1)
            rc = gd_errf(err, "%s: a band-set file must hold one band, it holds %d", files[idx[k]],
                         parts[k].bands);
        if (rc == 0 && (size_t)parts[k].height * parts[k].width >
                           (size_t)parts[best].height * parts[best].width)
            best = k;
    }
    if (rc == 0) {
        int h = parts[best].height, w = parts[best].width;
        int same = 1;
        for (int k = 0; k < nbands; k++)
            same &= parts[k].height == h && parts[k].width == w && parts[k].type == parts[0].type;
        size_t plane = (size_t)h * w;
        if ((size_t)nbands * plane > limit_of(opts))
            rc = gd_errf(err, "%s: band set larger than the limit of %zu samples", sample,
                         limit_of(opts));
        raster r = {.bands = nbands, .height = h, .width = w, .type = parts[0].type};
        if (rc == 0) {
            r.data = malloc((size_t)nbands * plane * sizeof *r.data);
            r.band_names = calloc((size_t)nbands, sizeof *r.band_names);
            int any_mask = 0;
            for (int k = 0; k < nbands; k++)
                any_mask |= parts[k].valid != NULL;
            if (any_mask)
                r.valid = malloc((size_t)nbands * plane);
            /* native samples only where nothing was resampled */
            if (opts && opts->keep_native && same)
                r.native = malloc((size_t)nbands * plane * raster_type_size(r.type));
            if (!r.data || !r.band_names || (any_mask && !r.valid) ||
                (opts && opts->keep_native && same && !r.native))
                rc = gd_errf(err, "%s: out of memory", sample);
        }
        for (int k = 0; rc == 0 && k < nbands; k++) {
            raster *p = &parts[k];
            float *dst = r.data + k * plane;
            uint8_t *dvalid = r.valid ? r.valid + k * plane : NULL;
            if (p->height == h && p->width == w) {
                memcpy(dst, p->data, plane * sizeof *dst);
                if (dvalid)
                    p->valid ? memcpy(dvalid, p->valid, plane) : memset(dvalid, 1, plane);
            } else {
                resample_band(p->data, p->valid, p->height, p->width, dst, dvalid, h, w);
            }
            if (r.native)
                memcpy((char *)r.native + k * plane * raster_type_size(r.type), p->native,
                       plane * raster_type_size(r.type));
            if (p->has_nodata) {
                r.has_nodata = true;
                r.nodata = p->nodata;
            }
            r.band_names[k] = names[idx[k]];
            names[idx[k]] = NULL;
            if (!r.band_names[k])
                rc = gd_errf(err, "%s: band %d named twice", sample, k + 1);
        }
        if (rc == 0)
            *out = r;
        else
            raster_free(&r);
    }
    for (int k = 0; parts && k < nbands; k++)
        raster_free(&parts[k]);
    free(parts);
    for (int k = 0; names && k < nfiles; k++)
        free(names[k]);
    free(names);
    free(idx);
    free_files(files, nfiles);
    return rc;
}

int raster_read(const char *sample, const raster_opts *opts, raster *out, gd_err *err)
{
    memset(out, 0, sizeof *out);
    struct stat st;
    int is_dir = stat(sample, &st) == 0 && S_ISDIR(st.st_mode);
    if (is_dir || (strchr(sample, ',') && access(sample, F_OK) != 0))
        return read_bandset(sample, is_dir, opts, out, err);
    raster_opts all = opts ? *opts : (raster_opts){0};
    all.bands = NULL;
    if (read_file(sample, &all, out, err) < 0)
        return -1;
    if (opts && opts->bands) {
        int *idx = malloc((size_t)out->bands * 4 * sizeof *idx);
        int k = idx ? resolve_bands(opts->bands, out->band_names, out->bands, idx, out->bands * 4,
                                    sample, err)
                    : gd_errf(err, "out of memory");
        if (k < 0 || subset_bands(out, idx, k, err, sample) < 0) {
            free(idx);
            raster_free(out);
            return -1;
        }
        free(idx);
    }
    return 0;
}

/* ---- writing ------------------------------------------------------------- */

static int write_tiff(TIFF *tif, const void *samples, raster_type type, int bands, int height,
                      int width, const char *path, const tiff_msgs *msgs, gd_err *err)
{
    uint16_t format = type == RT_F32 ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT;
    size_t sz = raster_type_size(type);
    int ok = TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, (uint32_t)width) &&
             TIFFSetField(tif, TIFFTAG_IMAGELENGTH, (uint32_t)height) &&
             TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)bands) &&
             TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, (uint16_t)(8 * sz)) &&
             TIFFSetField(tif, TIFFTAG_SAMPLEFORMAT, format) &&
             TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_SEPARATE) &&
             TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK) &&
             TIFFSetField(tif, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE);
    if (ok && bands > 1) {
        /* bands beyond the first are "extra samples" of no declared meaning,
         * as GDAL writes them */
        uint16_t *extra = calloc((size_t)bands - 1, sizeof *extra);
        ok = extra && TIFFSetField(tif, TIFFTAG_EXTRASAMPLES, (uint16_t)(bands - 1), extra);
        free(extra);
    }
    uint32_t rps = ok ? TIFFDefaultStripSize(tif, 0) : 0;
    ok = ok && TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, rps);
    if (!ok)
        return tiff_fail(err, path, msgs, "cannot set up the TIFF");
    size_t row = (size_t)width * sz;
    uint32_t strips_per_band = ((uint32_t)height + rps - 1) / rps;
    for (int b = 0; b < bands; b++)
        for (uint32_t s = 0; s < strips_per_band; s++) {
            uint32_t y = s * rps, rows = y + rps > (uint32_t)height ? (uint32_t)height - y : rps;
            const char *src = (const char *)samples + ((size_t)b * height + y) * row;
            if (TIFFWriteEncodedStrip(tif, (uint32_t)b * strips_per_band + s, (void *)src,
                                      (tmsize_t)(rows * row)) < 0)
                return tiff_fail(err, path, msgs, "write failed");
        }
    return 0;
}

int raster_write(const char *path, const void *samples, raster_type type, int bands, int height,
                 int width, gd_err *err)
{
    if (type != RT_U8 && type != RT_U16 && type != RT_F32)
        return gd_errf(err, "%s: can write uint8, uint16 or float32, not %s", path,
                       raster_type_name(type));
    if (bands < 1 || bands > 65535 || height < 1 || width < 1)
        return gd_errf(err, "%s: invalid size %dx%d with %d bands", path, width, height, bands);
    atomic_file af;
    if (atomic_open(&af, path, err) < 0)
        return -1;
    if (!af.tmp) { /* libtiff seeks while writing: a device or pipe cannot hold a TIFF */
        atomic_abort(&af);
        return gd_errf(err, "%s: not a regular file; TIFFs can only be written to files", path);
    }
    tiff_msgs msgs = {{0}};
    TIFFOpenOptions *o = open_options(&msgs);
    TIFF *tif = o ? TIFFFdOpenExt(af.fd, af.tmp, "w", o) : NULL;
    TIFFOpenOptionsFree(o);
    if (!tif) {
        tiff_fail(err, path, &msgs, "cannot create");
        atomic_abort(&af);
        return -1;
    }
    int rc = write_tiff(tif, samples, type, bands, height, width, path, &msgs, err);
    if (rc == 0 && !TIFFFlush(tif))
        rc = tiff_fail(err, path, &msgs, "flush failed");
    TIFFClose(tif); /* also closes af.fd */
    /* reopen the temporary file so atomic_commit can fsync and rename it */
    af.fd = rc == 0 ? open(af.tmp, O_RDONLY | O_CLOEXEC) : -1;
    if (rc == 0 && af.fd < 0)
        rc = gd_errno(err, path);
    if (rc < 0) {
        atomic_abort(&af);
        return -1;
    }
    return atomic_commit(&af, err);
}

int raster_write_float(const char *path, const raster *r, raster_type type, gd_err *err)
{
    size_t n = (size_t)r->bands * r->height * r->width, sz = raster_type_size(type);
    if (type == RT_F32)
        return raster_write(path, r->data, type, r->bands, r->height, r->width, err);
    void *buf = malloc(n * (sz ? sz : 1));
    if (!buf)
        return gd_errf(err, "%s: out of memory", path);
    double hi = type == RT_U8 ? 255.0 : 65535.0;
    for (size_t i = 0; i < n; i++) {
        double v = isnan(r->data[i]) ? 0.0 : nearbyint(r->data[i]);
        v = v < 0 ? 0 : v > hi ? hi : v;
        if (type == RT_U8)
            ((uint8_t *)buf)[i] = (uint8_t)v;
        else
            ((uint16_t *)buf)[i] = (uint16_t)v;
    }
    int rc = raster_write(path, buf, type, r->bands, r->height, r->width, err);
    free(buf);
    return rc;
}
