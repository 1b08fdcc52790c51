/* aelpaste.c: see aelpaste.h.  Semantics follow the AEL reference code
 * (SemiSeg-AEL): class_criterion, sample_from_bank, init_cutmix,
 * generate_cutmix and cut_mix_label_adaptive, rewritten for [C,H,W]
 * float32 images and uint8 label maps. */
#include "aelpaste.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The largest side we accept: keeps h * w * bands far from overflow. */
#define AEL_MAX_SIDE (1 << 16)

int ael_sample_alloc(ael_sample *s, int bands, int height, int width, gd_err *err)
{
    memset(s, 0, sizeof *s);
    if (bands < 1 || height < 1 || width < 1 || bands > 4096 || height > AEL_MAX_SIDE ||
        width > AEL_MAX_SIDE)
        return gd_errf(err, "invalid sample size %dx%dx%d", bands, height, width);
    size_t npix = (size_t)height * (size_t)width;
    s->image = calloc(npix * (size_t)bands, sizeof *s->image);
    s->label = calloc(npix, 1);
    if (!s->image || !s->label) {
        ael_sample_free(s);
        return gd_errf(err, "out of memory for a %dx%dx%d sample", bands, height, width);
    }
    s->bands = bands;
    s->height = height;
    s->width = width;
    return 0;
}

void ael_sample_free(ael_sample *s)
{
    free(s->image);
    free(s->label);
    memset(s, 0, sizeof *s);
}

/* ---- bank ---------------------------------------------------------------- */

void ael_bank_init(double *conf, int classes, double value, uint64_t seed)
{
    rng r;
    rng_init(&r, seed, 0, 0, 0);
    for (int k = 0; k < classes; k++)
        conf[k] = value < 0 ? rng_uniform(&r) : value;
}

int ael_bank_update(double *conf, const double *means, int classes, double momentum, gd_err *err)
{
    if (!(momentum >= 0 && momentum <= 1))
        return gd_errf(err, "momentum %g is not in [0, 1]", momentum);
    for (int k = 0; k < classes; k++)
        if (!(means[k] >= 0 && means[k] <= 1))
            return gd_errf(err, "class %d: mean confidence %g is not in [0, 1]", k, means[k]);
    for (int k = 0; k < classes; k++)
        conf[k] = momentum * conf[k] + (1 - momentum) * means[k];
    return 0;
}

int ael_class_probs(const double *conf, const uint8_t *candidate, int classes, double power,
                    double *probs)
{
    /* softmax with the maximum subtracted; (1 - c) is clamped at 0 so a
     * confidence a hair above 1 cannot make pow() return NaN */
    double top = -INFINITY;
    int n = 0;
    for (int k = 0; k < classes; k++) {
        probs[k] = 0;
        if (!candidate || candidate[k]) {
            double u = 1 - conf[k];
            probs[k] = pow(u > 0 ? u : 0, power);
            if (probs[k] > top)
                top = probs[k];
            n++;
        }
    }
    if (n == 0)
        return 0;
    double sum = 0;
    for (int k = 0; k < classes; k++) {
        if (!candidate || candidate[k]) {
            probs[k] = exp(probs[k] - top);
            sum += probs[k];
        }
    }
    for (int k = 0; k < classes; k++)
        probs[k] /= sum;
    return n;
}

int ael_draw_class(const double *probs, int classes, rng *r)
{
    double u = rng_uniform(r), acc = 0;
    int last = -1;
    for (int k = 0; k < classes; k++) {
        if (probs[k] <= 0)
            continue;
        acc += probs[k];
        last = k;
        if (u < acc)
            return k;
    }
    return last;   /* rounding left u above the total: the last candidate */
}

int ael_query_classes(const double *probs, int classes, int num, rng *r, uint8_t *chosen)
{
    memset(chosen, 0, (size_t)classes);
    int distinct = 0;
    for (int d = 0; d < num; d++) {
        int k = ael_draw_class(probs, classes, r);
        if (k < 0)
            return 0;
        if (!chosen[k])
            distinct++;
        chosen[k] = 1;
    }
    return distinct;
}

/* ---- geometry -------------------------------------------------------------- */

/* Source coordinate and weights for one output index (align_corners=False). */
static void lin_coord(int i, int in, int out, int *i0, int *i1, float *f)
{
    double s = (i + 0.5) * (double)in / out - 0.5;
    if (s < 0)
        s = 0;
    int a = (int)s;
    if (a > in - 1)
        a = in - 1;
    *i0 = a;
    *i1 = a + 1 < in ? a + 1 : in - 1;
    *f = (float)(s - a);
}

void ael_resize_bilinear(const float *src, int bands, int h, int w, float *dst, int h2, int w2)
{
    int *x0 = malloc((size_t)w2 * sizeof *x0), *x1 = malloc((size_t)w2 * sizeof *x1);
    float *fx = malloc((size_t)w2 * sizeof *fx);
    if (!x0 || !x1 || !fx) {   /* tiny; callers already hold the big buffers */
        free(x0), free(x1), free(fx);
        memset(dst, 0, (size_t)bands * h2 * w2 * sizeof *dst);
        return;
    }
    for (int x = 0; x < w2; x++)
        lin_coord(x, w, w2, &x0[x], &x1[x], &fx[x]);
    for (int b = 0; b < bands; b++) {
        const float *plane = src + (size_t)b * h * w;
        float *op = dst + (size_t)b * h2 * w2;
        for (int y = 0; y < h2; y++) {
            int y0, y1;
            float fy;
            lin_coord(y, h, h2, &y0, &y1, &fy);
            const float *r0 = plane + (size_t)y0 * w, *r1 = plane + (size_t)y1 * w;
            float *o = op + (size_t)y * w2;
            for (int x = 0; x < w2; x++) {
                float top = r0[x0[x]] + fx[x] * (r0[x1[x]] - r0[x0[x]]);
                float bot = r1[x0[x]] + fx[x] * (r1[x1[x]] - r1[x0[x]]);
                o[x] = top + fy * (bot - top);
            }
        }
    }
    free(x0), free(x1), free(fx);
}

void ael_resize_nearest(const uint8_t *src, int h, int w, uint8_t *dst, int h2, int w2)
{
    for (int y = 0; y < h2; y++) {
        int sy = (int)floor(y * (double)h / h2);
        if (sy > h - 1)
            sy = h - 1;
        for (int x = 0; x < w2; x++) {
            int sx = (int)floor(x * (double)w / w2);
            if (sx > w - 1)
                sx = w - 1;
            dst[(size_t)y * w2 + x] = src[(size_t)sy * w + sx];
        }
    }
}

int ael_sample_resize(const ael_sample *src, int h2, int w2, ael_sample *out, gd_err *err)
{
    if (ael_sample_alloc(out, src->bands, h2, w2, err) < 0)
        return -1;
    if (h2 == src->height && w2 == src->width) {
        memcpy(out->image, src->image, (size_t)src->bands * h2 * w2 * sizeof *out->image);
        memcpy(out->label, src->label, (size_t)h2 * w2);
        return 0;
    }
    ael_resize_bilinear(src->image, src->bands, src->height, src->width, out->image, h2, w2);
    ael_resize_nearest(src->label, src->height, src->width, out->label, h2, w2);
    return 0;
}

static int scaled(int n, double s)
{
    double v = nearbyint(n * s);   /* round half to even, as np.round */
    if (v < 1)
        return 1;
    if (v > AEL_MAX_SIDE)
        return AEL_MAX_SIDE;
    return (int)v;
}

void ael_draw_geom(rng *r, int h, int w, int H, int W, double smin, double smax, double flip_prob,
                   ael_geom *g)
{
    /* one draw per field, always in the same order, so that the stream
     * does not depend on which branches were taken */
    double s = rng_range(r, smin, smax);
    if (smax <= smin)
        s = smin;
    g->rh = scaled(h, s);
    g->rw = scaled(w, s);
    g->flip = rng_bernoulli(r, flip_prob);
    int ph = g->rh > H ? g->rh : H, pw = g->rw > W ? g->rw : W;
    g->oy = (int)rng_below(r, (uint64_t)(ph - H) + 1);
    g->ox = (int)rng_below(r, (uint64_t)(pw - W) + 1);
}

/* One row of the crop: n pixels from src row (flipped when asked), the
 * rest of dst left as it is (padding). */
static void crop_row_f(const float *src, int sw, int sx, int n, int flip, float *dst)
{
    if (!flip) {
        memcpy(dst, src + sx, (size_t)n * sizeof *dst);
        return;
    }
    for (int x = 0; x < n; x++)
        dst[x] = src[sw - 1 - (sx + x)];
}

static void crop_row_u8(const uint8_t *src, int sw, int sx, int n, int flip, uint8_t *dst)
{
    if (!flip) {
        memcpy(dst, src + sx, (size_t)n);
        return;
    }
    for (int x = 0; x < n; x++)
        dst[x] = src[sw - 1 - (sx + x)];
}

/* The crop of a resized, flipped sample, sampled directly: only the
 * H x W window is computed, never the whole resized sample (up to 4x the
 * base at scale 2).  Per pixel, the arithmetic is that of
 * ael_resize_bilinear / ael_resize_nearest. */
static int crop_resized(const ael_sample *src, const ael_geom *g, int rows, int cols,
                        ael_sample *out, gd_err *err)
{
    int h = src->height, w = src->width, W = out->width;
    int *x0 = malloc((size_t)cols * sizeof *x0), *x1 = malloc((size_t)cols * sizeof *x1);
    int *xn = malloc((size_t)cols * sizeof *xn);
    float *fx = malloc((size_t)cols * sizeof *fx);
    if (!x0 || !x1 || !xn || !fx) {
        free(x0), free(x1), free(xn), free(fx);
        return gd_errf(err, "out of memory");
    }
    for (int x = 0; x < cols; x++) {
        int rx = g->ox + x;
        if (g->flip)
            rx = g->rw - 1 - rx;
        lin_coord(rx, w, g->rw, &x0[x], &x1[x], &fx[x]);
        xn[x] = (int)floor(rx * (double)w / g->rw);
        if (xn[x] > w - 1)
            xn[x] = w - 1;
    }
    for (int y = 0; y < rows; y++) {
        int ry = g->oy + y, y0, y1;
        float fy;
        lin_coord(ry, h, g->rh, &y0, &y1, &fy);
        int yn = (int)floor(ry * (double)h / g->rh);
        if (yn > h - 1)
            yn = h - 1;
        const uint8_t *lrow = src->label + (size_t)yn * w;
        uint8_t *lo = out->label + (size_t)y * W;
        for (int x = 0; x < cols; x++)
            lo[x] = lrow[xn[x]];
        for (int b = 0; b < src->bands; b++) {
            const float *plane = src->image + (size_t)b * h * w;
            const float *r0 = plane + (size_t)y0 * w, *r1 = plane + (size_t)y1 * w;
            float *o = out->image + ((size_t)b * out->height + y) * W;
            for (int x = 0; x < cols; x++) {
                float top = r0[x0[x]] + fx[x] * (r0[x1[x]] - r0[x0[x]]);
                float bot = r1[x0[x]] + fx[x] * (r1[x1[x]] - r1[x0[x]]);
                o[x] = top + fy * (bot - top);
            }
        }
    }
    free(x0), free(x1), free(xn), free(fx);
    return 0;
}

int ael_apply_geom(const ael_sample *src, const ael_geom *g, int H, int W, int ignore,
                   ael_sample *out, gd_err *err)
{
    if (ael_sample_alloc(out, src->bands, H, W, err) < 0)
        return -1;
    /* out(y, x) = padded(oy + y, ox + x); padded is the resized sample
     * flipped, with image 0 and label `ignore` beyond its bottom and right
     * edges */
    memset(out->label, ignore, (size_t)H * W);
    int rows = g->rh - g->oy < H ? g->rh - g->oy : H;
    int cols = g->rw - g->ox < W ? g->rw - g->ox : W;
    if (rows <= 0 || cols <= 0)
        return 0;
    if (g->rh != src->height || g->rw != src->width) {
        if (crop_resized(src, g, rows, cols, out, err) < 0) {
            ael_sample_free(out);
            return -1;
        }
        return 0;
    }
    for (int y = 0; y < rows; y++) {   /* no resize: rows are copied */
        size_t srow = (size_t)(g->oy + y) * src->width;
        crop_row_u8(src->label + srow, src->width, g->ox, cols, g->flip, out->label + (size_t)y * W);
        for (int b = 0; b < src->bands; b++)
            crop_row_f(src->image + (size_t)b * src->height * src->width + srow, src->width, g->ox,
                       cols, g->flip, out->image + ((size_t)b * H + y) * W);
    }
    return 0;
}

/* ---- copy-paste ---------------------------------------------------------- */

size_t ael_copy_paste(const ael_sample *base, const ael_sample *paste, const uint8_t *chosen,
                      int classes, int ignore, ael_sample *out, uint8_t *mask)
{
    size_t npix = (size_t)base->height * base->width, pasted = 0;
    uint8_t take[256] = {0};
    for (int k = 0; k < classes && k < 256; k++)
        take[k] = chosen[k] && k != ignore;
    uint8_t *alpha = mask ? mask : malloc(npix);
    for (size_t i = 0; i < npix; i++) {
        uint8_t a = alpha ? (alpha[i] = take[paste->label[i]]) : take[paste->label[i]];
        out->label[i] = a ? paste->label[i] : base->label[i];
        pasted += a;
    }
    /* alpha is 0 or 1, so (1 - a) * base + a * paste is a selection; it
     * is written as one so that the result is exact (and vectorizes) */
    for (int b = 0; b < base->bands; b++) {
        const float *bi = base->image + (size_t)b * npix, *pi = paste->image + (size_t)b * npix;
        float *oi = out->image + (size_t)b * npix;
        if (alpha)
            for (size_t i = 0; i < npix; i++)
                oi[i] = alpha[i] ? pi[i] : bi[i];
        else   /* no memory for alpha: look the class up again */
            for (size_t i = 0; i < npix; i++)
                oi[i] = take[paste->label[i]] ? pi[i] : bi[i];
    }
    if (alpha != mask)
        free(alpha);
    return pasted;
}

/* ---- cutmix ---------------------------------------------------------------- */

void ael_presence(const uint8_t *label, size_t npix, int classes, int ignore, double thresh2,
                  uint8_t *present)
{
    size_t count[256] = {0};
    for (size_t i = 0; i < npix; i++)
        count[label[i]]++;
    for (int k = 0; k < classes; k++)
        present[k] = k != ignore && count[k] > 0 && (double)count[k] >= thresh2 * (double)npix;
}

long ael_components(const uint8_t *label, int h, int w, int cls, ael_component **out, gd_err *err)
{
    size_t npix = (size_t)h * w;
    uint8_t *seen = calloc(npix, 1);
    size_t *queue = malloc(npix * sizeof *queue);
    size_t cap = 16, n = 0;
    ael_component *comp = malloc(cap * sizeof *comp);
    if (!seen || !queue || !comp)
        goto oom;
    for (size_t start = 0; start < npix; start++) {
        if (label[start] != cls || seen[start])
            continue;
        if (n == cap) {
            ael_component *grown = realloc(comp, 2 * cap * sizeof *comp);
            if (!grown)
                goto oom;
            comp = grown, cap *= 2;
        }
        /* breadth-first flood fill over the 8 neighbours */
        ael_component c = {0, {h, w, 0, 0}};
        size_t head = 0, tail = 0;
        queue[tail++] = start;
        seen[start] = 1;
        while (head < tail) {
            size_t p = queue[head++];
            int y = (int)(p / (size_t)w), x = (int)(p % (size_t)w);
            c.area++;
            if (y < c.box.y0) c.box.y0 = y;
            if (x < c.box.x0) c.box.x0 = x;
            if (y + 1 > c.box.y1) c.box.y1 = y + 1;
            if (x + 1 > c.box.x1) c.box.x1 = x + 1;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int yy = y + dy, xx = x + dx;
                    if (yy < 0 || yy >= h || xx < 0 || xx >= w)
                        continue;
                    size_t q = (size_t)yy * w + xx;
                    if (!seen[q] && label[q] == cls) {
                        seen[q] = 1;
                        queue[tail++] = q;
                    }
                }
        }
        comp[n++] = c;
    }
    free(seen);
    free(queue);
    *out = comp;
    return (long)n;
oom:
    free(seen), free(queue), free(comp);
    return gd_errf(err, "out of memory for connected components of a %dx%d map", h, w);
}

void ael_init_cutmix(rng *r, int h, int w, ael_box *box)
{
    /* mask_props = 0.5; y_props = exp(u * log 0.5); x_props = 0.5 / y_props */
    double yp = exp(rng_uniform(r) * log(0.5)), xp = 0.5 / yp;
    int sh = (int)nearbyint(yp * h), sw = (int)nearbyint(xp * w);
    if (sh > h) sh = h;
    if (sw > w) sw = w;
    int py = (int)nearbyint((h - sh) * rng_uniform(r));
    int px = (int)nearbyint((w - sw) * rng_uniform(r));
    box->y0 = py, box->x0 = px, box->y1 = py + sh, box->x1 = px + sw;
}

int ael_cutmix_box(const uint8_t *label, int h, int w, int cls, double area_thresh, rng *r,
                   ael_box *box, gd_err *err)
{
    ael_component *comp;
    long n = ael_components(label, h, w, cls, &comp, err);
    if (n < 0)
        return -1;
    long big = 0;
    double min_area = area_thresh * (double)h * (double)w;
    for (long k = 0; k < n; k++)
        if ((double)comp[k].area > min_area)
            comp[big++] = comp[k];
    int found = big > 0;
    if (found)
        *box = comp[rng_below(r, (uint64_t)big)].box;
    else
        ael_init_cutmix(r, h, w, box);
    free(comp);
    return found;
}

void ael_cutmix(const ael_sample *base, const ael_sample *src, const ael_box *box, ael_sample *out,
                uint8_t *mask)
{
    int H = base->height, W = base->width;
    size_t npix = (size_t)H * W;
    memcpy(out->image, base->image, npix * base->bands * sizeof *out->image);
    memcpy(out->label, base->label, npix);
    if (mask)
        memset(mask, 0, npix);
    for (int y = box->y0; y < box->y1; y++) {
        size_t row = (size_t)y * W, len = (size_t)(box->x1 - box->x0);
        memcpy(out->label + row + box->x0, src->label + row + box->x0, len);
        if (mask)
            memset(mask + row + box->x0, 1, len);
        for (int b = 0; b < base->bands; b++)
            memcpy(out->image + b * npix + row + box->x0, src->image + b * npix + row + box->x0,
                   len * sizeof *out->image);
    }
}

/* ---- JSON means ---------------------------------------------------------- */

typedef struct jcur {
    const char *p, *end;
} jcur;

static void jws(jcur *c)
{
    while (c->p < c->end && isspace((unsigned char)*c->p))
        c->p++;
}

static int jlit(jcur *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) >= n && !memcmp(c->p, lit, n)) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* A number or null (-> 0). */
static int jnumber(jcur *c, double *v, gd_err *err)
{
    jws(c);
    if (jlit(c, "null")) {
        *v = 0;
        return 0;
    }
    char buf[64];
    size_t n = 0;
    /* c->p[n] != 0: strchr finds the terminator of its own string */
    while (c->p + n < c->end && n < sizeof buf - 1 && c->p[n] &&
           strchr("+-.0123456789eE", c->p[n]))
        n++;
    memcpy(buf, c->p, n);
    buf[n] = 0;
    char *e;
    *v = strtod(buf, &e);
    if (n == 0 || *e || !isfinite(*v))
        return gd_errf(err, "expected a number or null");
    c->p += n;
    return 0;
}

/* A string of at most 63 bytes, without escapes (keys are class ids). */
static int jkey(jcur *c, char *key, gd_err *err)
{
    jws(c);
    if (!jlit(c, "\""))
        return gd_errf(err, "expected a string key");
    size_t n = 0;
    while (c->p < c->end && *c->p != '"') {
        if (n == 63 || *c->p == '\\')
            return gd_errf(err, "key too long or escaped");
        key[n++] = *c->p++;
    }
    key[n] = 0;
    if (!jlit(c, "\""))
        return gd_errf(err, "unterminated string");
    jws(c);
    if (!jlit(c, ":"))
        return gd_errf(err, "expected ':' after \"%s\"", key);
    return 0;
}

static int jarray(jcur *c, int classes, double *means, gd_err *err)
{
    int n = 0;
    jws(c);
    if (jlit(c, "]"))
        return gd_errf(err, "array has 0 values, the bank has %d classes", classes);
    for (;;) {
        double v;
        if (jnumber(c, &v, err) < 0)
            return gd_err_prefix(err, "value %d", n);
        if (n < classes)
            means[n] = v;
        n++;
        jws(c);
        if (jlit(c, "]"))
            break;
        if (!jlit(c, ","))
            return gd_errf(err, "value %d: expected ',' or ']'", n - 1);
    }
    if (n != classes)
        return gd_errf(err, "array has %d values, the bank has %d classes", n, classes);
    return 0;
}

static int jvalue(jcur *c, int classes, double *means, int depth, gd_err *err);

static int jobject(jcur *c, int classes, double *means, int depth, gd_err *err)
{
    jws(c);
    if (jlit(c, "}"))
        return 0;
    for (;;) {
        char key[64];
        if (jkey(c, key, err) < 0)
            return -1;
        if (!strcmp(key, "means") && depth == 0) {
            if (jvalue(c, classes, means, 1, err) < 0)
                return gd_err_prefix(err, "\"means\"");
        } else {
            char *e;
            long k = strtol(key, &e, 10);
            if (!*key || *e || k < 0 || k >= classes)
                return gd_errf(err, "key \"%s\" is not a class id in [0, %d)", key, classes);
            if (jnumber(c, &means[k], err) < 0)
                return gd_err_prefix(err, "class %ld", k);
        }
        jws(c);
        if (jlit(c, "}"))
            return 0;
        if (!jlit(c, ","))
            return gd_errf(err, "expected ',' or '}'");
    }
}

static int jvalue(jcur *c, int classes, double *means, int depth, gd_err *err)
{
    jws(c);
    if (jlit(c, "["))
        return jarray(c, classes, means, err);
    if (jlit(c, "{"))
        return jobject(c, classes, means, depth, err);
    return gd_errf(err, "expected a JSON array or object");
}

int ael_parse_means_json(const char *text, size_t len, int classes, double *means, gd_err *err)
{
    jcur c = {text, text + len};
    for (int k = 0; k < classes; k++)
        means[k] = 0;
    if (jvalue(&c, classes, means, 0, err) < 0)
        return -1;
    jws(&c);
    if (c.p != c.end)
        return gd_errf(err, "trailing text after the JSON value");
    return 0;
}
