#include "augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- RandomResizedCrop ------------------------------------------------- */

/* torchvision's fallback when ten tries found no crop that fits: the
 * largest centred box whose aspect ratio is inside the range. */
static void rrc_fallback(int H, int W, const double ratio[2], crop_box *out)
{
    double in_ratio = (double)W / (double)H;
    double rmin = fmin(ratio[0], ratio[1]), rmax = fmax(ratio[0], ratio[1]);
    int w = W, h = H;
    if (in_ratio < rmin)
        h = (int)nearbyint(w / rmin);
    else if (in_ratio > rmax)
        w = (int)nearbyint(h * rmax);
    if (h < 1)
        h = 1;
    if (w < 1)
        w = 1;
    out->height = h;
    out->width = w;
    out->top = (H - h) / 2;
    out->left = (W - w) / 2;
}

int rrc_sample(rng *r, int H, int W, const double scale[2], const double ratio[2], crop_box *out)
{
    double area = (double)H * (double)W;
    double lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int t = 1; t <= 10; t++) {
        double target = area * rng_range(r, scale[0], scale[1]);
        double aspect = exp(rng_range(r, lr0, lr1));
        /* Python's round() is half-to-even, as nearbyint in the default mode */
        double w = nearbyint(sqrt(target * aspect));
        double h = nearbyint(sqrt(target / aspect));
        if (w > 0 && w <= W && h > 0 && h <= H) {
            out->height = (int)h;
            out->width = (int)w;
            out->top = (int)rng_below(r, (uint64_t)(H - out->height + 1));
            out->left = (int)rng_below(r, (uint64_t)(W - out->width + 1));
            return t;
        }
    }
    rrc_fallback(H, W, ratio, out);
    return 11;
}

/* ---- geometry ----------------------------------------------------------- */

void view_geom_set_ssr(view_geom *g, double angle_deg, double scale, double dx, double dy)
{
    double th = angle_deg * M_PI / 180.0;
    double a = scale * cos(th), b = scale * sin(th);
    double cx = (g->out_w - 1) / 2.0, cy = (g->out_h - 1) / 2.0;
    /* forward map (OpenCV): [a b tx; -b a ty] */
    double tx = (1 - a) * cx - b * cy + dx * g->out_w;
    double ty = b * cx + (1 - a) * cy + dy * g->out_h;
    double det = a * a + b * b;
    g->inv[0] = a / det;
    g->inv[1] = -b / det;
    g->inv[3] = b / det;
    g->inv[4] = a / det;
    g->inv[2] = -(g->inv[0] * tx + g->inv[1] * ty);
    g->inv[5] = -(g->inv[3] * tx + g->inv[4] * ty);
    g->ssr = true;
}

/* Reflect-101 (gfedcb|abcdefgh|gfedcba) of a continuous position onto
 * [0, n-1]. */
static inline double reflect101(double v, int n)
{
    if (v >= 0 && v <= n - 1)
        return v;
    if (n == 1)
        return 0;
    double period = 2.0 * (n - 1);
    v = fmod(fabs(v), period);
    return v > n - 1 ? period - v : v;
}

/* Rotations by multiples of 90 degrees land on pixel centres up to a few
 * ulps of sin/cos; snapping keeps such results exact. */
static inline double snap(double v)
{
    /* the nearest integer by a cast (positions are far inside int64):
     * nearbyint would be a slow library call here, once per pixel */
    double r = (double)(int64_t)(v < 0 ? v - 0.5 : v + 0.5);
    return fabs(v - r) < 1e-9 ? r : v;
}

static inline double clampd(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The map's constants, computed once per view rather than per pixel. */
typedef struct geom_map {
    const view_geom *g;
    double fx, fy;                /* crop size / output size */
    double xlo, xhi, ylo, yhi;    /* the crop, in pixel centres */
} geom_map;

static void geom_map_init(geom_map *m, const view_geom *g)
{
    m->g = g;
    m->fx = (double)g->crop.width / g->out_w;
    m->fy = (double)g->crop.height / g->out_h;
    m->xlo = g->crop.left, m->xhi = g->crop.left + g->crop.width - 1;
    m->ylo = g->crop.top, m->yhi = g->crop.top + g->crop.height - 1;
}

static inline void geom_map_apply(const geom_map *m, double ox, double oy, bool clamp, double *sx,
                                  double *sy)
{
    const view_geom *g = m->g;
    double x = ox, y = oy;
    if (g->ssr) {
        x = snap(g->inv[0] * ox + g->inv[1] * oy + g->inv[2]);
        y = snap(g->inv[3] * ox + g->inv[4] * oy + g->inv[5]);
        x = reflect101(x, g->out_w);
        y = reflect101(y, g->out_h);
    }
    if (g->flip)
        x = g->out_w - 1 - x;
    /* resize of the crop with pixel centres aligned (align_corners=False),
     * clamped to the crop as crop-then-resize would be */
    *sx = m->xlo + (x + 0.5) * m->fx - 0.5;
    *sy = m->ylo + (y + 0.5) * m->fy - 0.5;
    if (clamp) {
        *sx = clampd(*sx, m->xlo, m->xhi);
        *sy = clampd(*sy, m->ylo, m->yhi);
    }
}

void view_geom_source(const view_geom *g, double ox, double oy, double *sx, double *sy)
{
    geom_map m;
    geom_map_init(&m, g);
    geom_map_apply(&m, ox, oy, true, sx, sy);
}

/* The bilinear tap of one source position along one axis. */
static void axis_tap1(double s, int hi, int32_t *i0, int16_t *step, float *frac)
{
    int i = (int)s; /* floor: s >= 0, clamped to the crop */
    *i0 = i;
    *step = i < hi;
    *frac = *step ? (float)(s - i) : 0.0f;
}

void warp_taps(const view_geom *g, int W, warp_tap *taps)
{
    geom_map m;
    geom_map_init(&m, g);
    int xmax = g->crop.left + g->crop.width - 1, ymax = g->crop.top + g->crop.height - 1;
    if (!g->ssr) {
        /* without rotation x depends on the column only and y on the row
         * only: one tap per column and per row, combined */
        for (int ox = 0; ox < g->out_w; ox++) {
            double sx, sy;
            int32_t x0;
            geom_map_apply(&m, ox, 0, true, &sx, &sy);
            axis_tap1(sx, xmax, &x0, &taps[ox].dx, &taps[ox].fx);
            taps[ox].off = x0; /* row 0 holds the column taps until the end */
        }
        for (int oy = g->out_h - 1; oy >= 0; oy--) {
            double sx, sy;
            int32_t y0;
            int16_t dy;
            float fy;
            geom_map_apply(&m, 0, oy, true, &sx, &sy);
            axis_tap1(sy, ymax, &y0, &dy, &fy);
            warp_tap *row = taps + (size_t)oy * g->out_w;
            for (int ox = 0; ox < g->out_w; ox++) {
                row[ox] = taps[ox]; /* rows from the last up: row 0 is done last */
                row[ox].off = (int64_t)y0 * W + taps[ox].off;
                row[ox].dy = dy;
                row[ox].fy = fy;
            }
        }
        return;
    }
    for (int oy = 0; oy < g->out_h; oy++)
        for (int ox = 0; ox < g->out_w; ox++) {
            double sx, sy;
            geom_map_apply(&m, ox, oy, true, &sx, &sy);
            warp_tap *t = &taps[(size_t)oy * g->out_w + ox];
            int32_t x0, y0;
            axis_tap1(sx, xmax, &x0, &t->dx, &t->fx);
            axis_tap1(sy, ymax, &y0, &t->dy, &t->fy);
            t->off = (int64_t)y0 * W + x0;
        }
}

void warp_apply(const float *src, int C, int H, int W, const warp_tap *taps, size_t npix,
                float *dst)
{
    /* pixel by pixel, every band: each tap is loaded once */
    size_t plane = (size_t)H * W;
    for (size_t p = 0; p < npix; p++) {
        const warp_tap *t = &taps[p];
        const float *q = src + t->off;
        size_t dx = (size_t)t->dx, dy = (size_t)t->dy * W;
        float fx = t->fx, fy = t->fy;
        for (int c = 0; c < C; c++, q += plane) {
            float top = q[0] + fx * (q[dx] - q[0]);
            float bot = q[dy] + fx * (q[dy + dx] - q[dy]);
            dst[(size_t)c * npix + p] = top + fy * (bot - top);
        }
    }
}

void warp_axes(const view_geom *g, axis_tap *cols, axis_tap *rows)
{
    geom_map m;
    geom_map_init(&m, g);
    int xmax = g->crop.left + g->crop.width - 1, ymax = g->crop.top + g->crop.height - 1;
    for (int ox = 0; ox < g->out_w; ox++) {
        double sx, sy;
        geom_map_apply(&m, ox, 0, true, &sx, &sy);
        axis_tap1(sx, xmax, &cols[ox].i0, &cols[ox].step, &cols[ox].frac);
    }
    for (int oy = 0; oy < g->out_h; oy++) {
        double sx, sy;
        geom_map_apply(&m, 0, oy, true, &sx, &sy);
        axis_tap1(sy, ymax, &rows[oy].i0, &rows[oy].step, &rows[oy].frac);
    }
}

/* Per output row: the two source rows blended over the crop's columns
 * (a vector loop), then two taps per output pixel from that blend. */
void warp_apply_axes(const float *src, int C, int H, int W, const view_geom *g,
                     const axis_tap *cols, const axis_tap *rows, float *buf, float *dst)
{
    int left = g->crop.left, cw = g->crop.width, ow = g->out_w;
    for (int c = 0; c < C; c++) {
        const float *s = src + (size_t)c * H * W;
        for (int oy = 0; oy < g->out_h; oy++) {
            const float *r0 = s + (size_t)rows[oy].i0 * W + left;
            const float *r1 = r0 + (size_t)rows[oy].step * W;
            float fy = rows[oy].frac;
#pragma omp simd
            for (int x = 0; x < cw; x++)
                buf[x] = r0[x] + fy * (r1[x] - r0[x]);
            float *d = dst + ((size_t)c * g->out_h + oy) * ow;
            for (int ox = 0; ox < ow; ox++) {
                const float *q = buf + (cols[ox].i0 - left);
                d[ox] = q[0] + cols[ox].frac * (q[cols[ox].step] - q[0]);
            }
        }
    }
}

/* Keys' cubic convolution weights for the taps at -1, 0, 1, 2 from a
 * position t in [0, 1) past tap 0 (a = -0.75, as PyTorch). */
static void cubic_weights(double t, float w[4])
{
    const double a = -0.75;
    double x1 = t + 1, x2 = t, x3 = 1 - t, x4 = 2 - t;
    w[0] = (float)(((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a);
    w[1] = (float)(((a + 2) * x2 - (a + 3)) * x2 * x2 + 1);
    w[2] = (float)(((a + 2) * x3 - (a + 3)) * x3 * x3 + 1);
    w[3] = (float)(((a * x4 - 5 * a) * x4 + 8 * a) * x4 - 4 * a);
}

/* The four tap indices (clamped to [lo, hi]) and weights of position s. */
static void cubic_axis(double s, int lo, int hi, int idx[4], float w[4])
{
    double f = floor(s);
    int i = (int)f;
    cubic_weights(s - f, w);
    for (int k = 0; k < 4; k++) {
        int j = i - 1 + k;
        idx[k] = j < lo ? lo : j > hi ? hi : j;
    }
}

void warp_apply_bicubic(const float *src, int C, int H, int W, const view_geom *g, float *dst)
{
    geom_map m;
    geom_map_init(&m, g);
    size_t plane = (size_t)H * W, npix = (size_t)g->out_h * g->out_w;
    int xlo = g->crop.left, xhi = xlo + g->crop.width - 1;
    int ylo = g->crop.top, yhi = ylo + g->crop.height - 1;
    for (int oy = 0; oy < g->out_h; oy++)
        for (int ox = 0; ox < g->out_w; ox++) {
            /* unclamped, as PyTorch's bicubic; the taps are clamped instead */
            double sx, sy;
            geom_map_apply(&m, ox, oy, false, &sx, &sy);
            int xi[4], yi[4];
            float wx[4], wy[4];
            cubic_axis(sx, xlo, xhi, xi, wx);
            cubic_axis(sy, ylo, yhi, yi, wy);
            size_t p = (size_t)oy * g->out_w + ox;
            for (int c = 0; c < C; c++) {
                const float *b = src + c * plane;
                float acc = 0;
                for (int r = 0; r < 4; r++) {
                    const float *row = b + (size_t)yi[r] * W;
                    acc += wy[r] * (wx[0] * row[xi[0]] + wx[1] * row[xi[1]] +
                                    wx[2] * row[xi[2]] + wx[3] * row[xi[3]]);
                }
                dst[c * npix + p] = acc;
            }
        }
}

/* ---- photometric ------------------------------------------------------- */

void jitter_apply(float *img, int C, size_t npix, const float *b, const float *c)
{
    for (int k = 0; k < C; k++) {
        float *x = img + (size_t)k * npix;
        /* four running sums in a fixed order: no dependence on alignment
         * or threads, a quarter of the latency chain */
        double s4[4] = {0, 0, 0, 0};
        size_t p = 0;
        for (; p + 4 <= npix; p += 4)
            for (int j = 0; j < 4; j++)
                s4[j] += x[p + j];
        for (; p < npix; p++)
            s4[0] += x[p];
        double sum = (s4[0] + s4[1]) + (s4[2] + s4[3]);
        /* the mean after brightness is b times the mean before */
        float m = (float)(sum / (double)npix) * b[k];
        float bk = b[k], ck = c[k];
#pragma omp simd
        for (size_t q = 0; q < npix; q++) {
            float v = (x[q] * bk - m) * ck + m;
            x[q] = v > 0 ? v : 0;
        }
    }
}

void collapse_apply(float *img, int C, size_t npix, int k)
{
    const float *src = img + (size_t)k * npix;
    for (int c = 0; c < C; c++)
        if (c != k)
            memcpy(img + (size_t)c * npix, src, npix * sizeof *img);
}

int gauss_kernel(double sigma, float *k)
{
    int r = (int)ceil(3.0 * sigma);
    if (r < 1)
        r = 1;
    if (r > GAUSS_MAX_RADIUS)
        r = GAUSS_MAX_RADIUS;
    double w[2 * GAUSS_MAX_RADIUS + 1], sum = 0;
    for (int i = -r; i <= r; i++)
        sum += w[i + r] = exp(-(double)(i * i) / (2.0 * sigma * sigma));
    for (int i = 0; i <= 2 * r; i++)
        k[i] = (float)(w[i] / sum);
    return r;
}

/* Reflect-101 of an integer index onto [0, n-1], for any distance. */
static int reflect101_i(int i, int n)
{
    if (n == 1)
        return 0;
    int period = 2 * (n - 1);
    i = abs(i) % period;
    return i > n - 1 ? period - i : i;
}

/* o[x] += sum of k[t] * src[t][x] over n taps, four taps per pass over
 * the row so that o is loaded and stored a quarter as often. */
static void accumulate(float *restrict o, const float *const *src, const float *k, int n, int w)
{
    for (int x = 0; x < w; x++)
        o[x] = 0;
    int t = 0;
    for (; t + 4 <= n; t += 4) {
        const float *a = src[t], *b = src[t + 1], *c = src[t + 2], *d = src[t + 3];
        float ka = k[t], kb = k[t + 1], kc = k[t + 2], kd = k[t + 3];
#pragma omp simd
        for (int x = 0; x < w; x++)
            o[x] += (ka * a[x] + kb * b[x]) + (kc * c[x] + kd * d[x]);
    }
    for (; t < n; t++) {
        const float *a = src[t];
        float ka = k[t];
#pragma omp simd
        for (int x = 0; x < w; x++)
            o[x] += ka * a[x];
    }
}

static void blur_rows(const float *in, float *out, int h, int w, const float *k, int r, float *pad)
{
    const float *src[2 * GAUSS_MAX_RADIUS + 1];
    for (int t = 0; t <= 2 * r; t++)
        src[t] = pad + t;
    for (int y = 0; y < h; y++) {
        const float *row = in + (size_t)y * w;
        memcpy(pad + r, row, (size_t)w * sizeof *row);
        for (int i = 1; i <= r; i++) {
            pad[r - i] = row[reflect101_i(-i, w)];
            pad[r + w - 1 + i] = row[reflect101_i(w - 1 + i, w)];
        }
        accumulate(out + (size_t)y * w, src, k, 2 * r + 1, w);
    }
}

static void blur_cols(const float *in, float *out, int h, int w, const float *k, int r)
{
    const float *src[2 * GAUSS_MAX_RADIUS + 1];
    for (int y = 0; y < h; y++) {
        for (int t = 0; t <= 2 * r; t++)
            src[t] = in + (size_t)reflect101_i(y + t - r, h) * w;
        accumulate(out + (size_t)y * w, src, k, 2 * r + 1, w);
    }
}

void blur_apply(float *img, int C, int h, int w, double sigma, float *tmp)
{
    float k[2 * GAUSS_MAX_RADIUS + 1];
    int r = gauss_kernel(sigma, k);
    size_t npix = (size_t)h * w;
    float *pad = tmp + npix;
    for (int c = 0; c < C; c++) {
        float *x = img + (size_t)c * npix;
        blur_rows(x, tmp, h, w, k, r, pad);
        blur_cols(tmp, x, h, w, k, r);
    }
}

void solarize_apply(float *img, size_t n, float t)
{
    float t2 = 2 * t;
#pragma omp simd
    for (size_t p = 0; p < n; p++)
        img[p] = img[p] >= t ? t2 - img[p] : img[p];
}

void normalize_apply(float *img, int C, size_t npix, const float *mean, const float *std)
{
    for (int c = 0; c < C; c++) {
        float *x = img + (size_t)c * npix;
        float m = mean[c], inv = 1.0f / std[c];
#pragma omp simd
        for (size_t p = 0; p < npix; p++)
            x[p] = (x[p] - m) * inv;
    }
}

