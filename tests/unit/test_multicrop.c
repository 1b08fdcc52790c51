/* Unit tests of the multi-crop augmentation: sampling distributions
 * against the specification, exact results on synthetic patterns, and
 * the half-precision conversions against known bit patterns and the
 * compiler's own _Float16. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "halfprec.h"
#include "msg.h"
#include "multicrop.h"
#include "test.h"

/* ---- RandomResizedCrop ------------------------------------------------ */

/* With the local-crop scale range every try fits a 1000x1000 image, so
 * the area fraction must be uniform on [0.05, 0.4] and log(w/h) uniform on
 * [log 3/4, log 4/3] (up to the rounding of sides to whole pixels). */
TEST(rrc_scale_and_aspect_distributions)
{
    const double scale[2] = {0.05, 0.4}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    const int N = 20000, H = 1000, W = 1000, BINS = 10;
    int area_hist[10] = {0}, ratio_hist[10] = {0};
    rng r;
    rng_init(&r, 42, 0, 0, 0);
    double lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int k = 0; k < N; k++) {
        crop_box c;
        int tries = rrc_sample(&r, H, W, scale, ratio, &c);
        CHECK(tries == 1);
        CHECK(c.top >= 0 && c.left >= 0 && c.top + c.height <= H && c.left + c.width <= W);
        double a = (double)c.height * c.width / ((double)H * W);
        double lr = log((double)c.width / c.height);
        int ba = (int)((a - scale[0]) / (scale[1] - scale[0]) * BINS);
        int br = (int)((lr - lr0) / (lr1 - lr0) * BINS);
        /* rounding of the sides can step just outside the range */
        ba = ba < 0 ? 0 : ba >= BINS ? BINS - 1 : ba;
        br = br < 0 ? 0 : br >= BINS ? BINS - 1 : br;
        area_hist[ba]++;
        ratio_hist[br]++;
    }
    /* each bin holds N/10 = 2000 +- sqrt(2000*0.9) = 42 (1 sigma): allow 5 sigma */
    for (int b = 0; b < BINS; b++) {
        CHECK_MSG(abs(area_hist[b] - N / BINS) < 212, "area bin %d: %d", b, area_hist[b]);
        CHECK_MSG(abs(ratio_hist[b] - N / BINS) < 212, "ratio bin %d: %d", b, ratio_hist[b]);
    }
}

/* A crop position is uniform over the places it fits. */
TEST(rrc_position_uniform)
{
    const double scale[2] = {0.25, 0.25}, ratio[2] = {1, 1};
    rng r;
    rng_init(&r, 7, 1, 2, 3);
    int hist[2] = {0};
    for (int k = 0; k < 4000; k++) {
        crop_box c;
        rrc_sample(&r, 100, 100, scale, ratio, &c);
        CHECK(c.width == 50 && c.height == 50);
        CHECK(c.left >= 0 && c.left <= 50);
        hist[c.left > 25]++;
    }
    /* P(left > 25) = 25/51 */
    CHECK_MSG(fabs(hist[1] / 4000.0 - 25.0 / 51.0) < 0.04, "%d of 4000", hist[1]);
}

/* No try can fit a 10x100 strip at scale >= 0.9 with ratio <= 4/3: the
 * centre crop of torchvision's fallback, h = 10, w = round(10 * 4/3). */
TEST(rrc_fallback_center_crop)
{
    const double scale[2] = {0.9, 1.0}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    rng r;
    rng_init(&r, 1, 0, 0, 0);
    crop_box c;
    CHECK(rrc_sample(&r, 10, 100, scale, ratio, &c) == 11);
    CHECK(c.height == 10 && c.width == 13);
    CHECK(c.top == 0 && c.left == 43);
    /* a tall strip: w = 10, h = round(10 / (3/4)) = 13 */
    CHECK(rrc_sample(&r, 100, 10, scale, ratio, &c) == 11);
    CHECK(c.width == 10 && c.height == 13 && c.top == 43 && c.left == 0);
}

/* ---- geometry on synthetic patterns ----------------------------------- */

/* A pattern where every pixel of every band differs. */
static float *pattern(int C, int H, int W)
{
    float *x = malloc((size_t)C * H * W * sizeof *x);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int xx = 0; xx < W; xx++)
                x[((size_t)c * H + y) * W + xx] = (float)(1000 * c + 37 * y + xx) + 0.25f;
    return x;
}

static view_geom full_geom(int H, int W)
{
    view_geom g;
    memset(&g, 0, sizeof g);
    g.crop = (crop_box){0, 0, H, W};
    g.out_h = H;
    g.out_w = W;
    return g;
}

static float *warp(const float *src, int C, int H, int W, const view_geom *g)
{
    size_t npix = (size_t)g->out_h * g->out_w;
    warp_tap *taps = malloc(npix * sizeof *taps);
    float *dst = malloc((size_t)C * npix * sizeof *dst);
    warp_taps(g, W, taps);
    warp_apply(src, C, H, W, taps, npix, dst);
    free(taps);
    return dst;
}

#define AT(buf, c, y, x, H, W) (buf)[((size_t)(c) * (H) + (y)) * (W) + (x)]

TEST(warp_identity_and_flip_exact)
{
    const int C = 3, H = 7, W = 9;
    float *src = pattern(C, H, W);
    view_geom g = full_geom(H, W);
    float *id = warp(src, C, H, W, &g);
    CHECK(memcmp(id, src, (size_t)C * H * W * sizeof *src) == 0);
    g.flip = true;
    float *fl = warp(src, C, H, W, &g);
    int bad = 0;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                bad += AT(fl, c, y, x, H, W) != AT(src, c, y, W - 1 - x, H, W);
    free(src), free(id), free(fl);
    CHECK(bad == 0);
}

TEST(warp_crop_exact)
{
    const int C = 2, H = 10, W = 12;
    float *src = pattern(C, H, W);
    view_geom g = full_geom(4, 5);
    g.crop = (crop_box){3, 6, 4, 5}; /* a crop at its own size is a copy */
    float *d = warp(src, C, H, W, &g);
    int bad = 0;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 5; x++)
                bad += AT(d, c, y, x, 4, 5) != AT(src, c, y + 3, x + 6, H, W);
    free(src), free(d);
    CHECK(bad == 0);
}

/* Halving the size samples between four pixels: each output pixel is the
 * mean of its 2x2 block. */
TEST(warp_downsample_is_block_mean)
{
    const int C = 2, H = 8, W = 8;
    float *src = pattern(C, H, W);
    view_geom g = full_geom(4, 4);
    g.crop = (crop_box){0, 0, H, W};
    float *d = warp(src, C, H, W, &g);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++) {
                double m = (AT(src, c, 2 * y, 2 * x, H, W) + AT(src, c, 2 * y, 2 * x + 1, H, W) +
                            AT(src, c, 2 * y + 1, 2 * x, H, W) +
                            AT(src, c, 2 * y + 1, 2 * x + 1, H, W)) / 4;
                CHECK_NEAR(AT(d, c, y, x, 4, 4), m, 1e-6);
            }
    free(src), free(d);
}

/* 90 degrees counter-clockwise about the centre: the top-right pixel goes
 * to the top-left, so out[i][j] = in[j][n-1-i]; 180 degrees mirrors both
 * axes. */
TEST(warp_rotation_exact)
{
    const int C = 2, n = 8;
    float *src = pattern(C, n, n);
    view_geom g = full_geom(n, n);
    view_geom_set_ssr(&g, 90, 1, 0, 0);
    float *r90 = warp(src, C, n, n, &g);
    g = full_geom(n, n);
    view_geom_set_ssr(&g, 180, 1, 0, 0);
    float *r180 = warp(src, C, n, n, &g);
    int bad90 = 0, bad180 = 0;
    for (int c = 0; c < C; c++)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                bad90 += AT(r90, c, i, j, n, n) != AT(src, c, j, n - 1 - i, n, n);
                bad180 += AT(r180, c, i, j, n, n) != AT(src, c, n - 1 - i, n - 1 - j, n, n);
            }
    free(src), free(r90), free(r180);
    CHECK_MSG(bad90 == 0, "%d pixels differ after 90 degrees", bad90);
    CHECK_MSG(bad180 == 0, "%d pixels differ after 180 degrees", bad180);
}

/* A shift of one pixel to the right uncovers column 0, which reflect-101
 * fills with column 1 (OpenCV's BORDER_REFLECT_101: gfedcb|abcdefgh). */
TEST(warp_shift_reflect101_border)
{
    const int C = 1, H = 5, W = 6;
    float *src = pattern(C, H, W);
    view_geom g = full_geom(H, W);
    view_geom_set_ssr(&g, 0, 1, 1.0 / W, 0);
    float *d = warp(src, C, H, W, &g);
    int bad = 0;
    for (int y = 0; y < H; y++) {
        bad += AT(d, 0, y, 0, H, W) != AT(src, 0, y, 1, H, W);
        for (int x = 1; x < W; x++)
            bad += AT(d, 0, y, x, H, W) != AT(src, 0, y, x - 1, H, W);
    }
    free(src), free(d);
    CHECK(bad == 0);
}

/* ---- photometric ------------------------------------------------------ */

TEST(solarize_exact)
{
    float x[] = {0.0f, 0.2f, 0.49f, 0.5f, 0.7f, 1.0f, 1.25f};
    float want[] = {0.0f, 0.2f, 0.49f, 0.5f, 1.0f - 0.7f, 0.0f, -0.25f};
    solarize_apply(x, 7, 0.5f);
    for (int k = 0; k < 7; k++)
        CHECK_MSG(x[k] == want[k], "x[%d] = %g, want %g", k, x[k], want[k]);
    /* 8-bit data at 127.5: PIL's 255 - x above the threshold */
    float u[] = {127.0f, 128.0f, 255.0f};
    solarize_apply(u, 3, 127.5f);
    CHECK(u[0] == 127.0f && u[1] == 127.0f && u[2] == 0.0f);
}

TEST(gauss_kernel_sums_to_one_and_is_symmetric)
{
    float k[2 * GAUSS_MAX_RADIUS + 1];
    for (double s = 0.1; s <= 5.0; s += 0.3) {
        int r = gauss_kernel(s, k);
        CHECK(r == (int)fmin(GAUSS_MAX_RADIUS, fmax(1, ceil(3 * s))));
        double sum = 0;
        for (int i = 0; i <= 2 * r; i++) {
            sum += k[i];
            CHECK(k[i] == k[2 * r - i]);
            CHECK(i == 0 || i > r || k[i] >= k[i - 1]);
        }
        CHECK_NEAR(sum, 1.0, 1e-6);
    }
}

/* An impulse far from the border blurs into the outer product of the
 * kernel with itself; a constant image stays constant up to rounding. */
TEST(blur_impulse_and_constant)
{
    const int n = 33, c = 16;
    float *img = calloc((size_t)n * n, sizeof *img);
    float *tmp = malloc(((size_t)n * n + n + 2 * GAUSS_MAX_RADIUS) * sizeof *tmp);
    img[c * n + c] = 1.0f;
    float k[2 * GAUSS_MAX_RADIUS + 1];
    int r = gauss_kernel(1.7, k);
    blur_apply(img, 1, n, n, 1.7, tmp);
    double total = 0;
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int dy = y - c, dx = x - c;
            double want = abs(dy) <= r && abs(dx) <= r ? (double)k[dy + r] * k[dx + r] : 0;
            CHECK_NEAR(img[y * n + x], want, 1e-6);
            total += img[y * n + x];
        }
    CHECK_NEAR(total, 1.0, 1e-5);
    for (int i = 0; i < n * n; i++)
        img[i] = 0.3f;
    blur_apply(img, 1, n, n, 2.0, tmp);
    for (int i = 0; i < n * n; i++)
        CHECK_NEAR(img[i], 0.3, 1e-6);
    free(img), free(tmp);
}

TEST(jitter_collapse_normalize)
{
    /* band 0: 1, 2, 3, 4 (mean 2.5); brightness 2, contrast 0.5:
     * 2x = 2 4 6 8 (mean 5), (2x - 5) * 0.5 + 5 = 3.5 4.5 5.5 6.5 */
    float img[8] = {1, 2, 3, 4, 10, 10, 10, 10};
    float b[2] = {2, 1}, c[2] = {0.5f, 3};
    jitter_apply(img, 2, 4, b, c);
    float want[8] = {3.5f, 4.5f, 5.5f, 6.5f, 10, 10, 10, 10};
    for (int k = 0; k < 8; k++)
        CHECK_NEAR(img[k], want[k], 1e-6);
    collapse_apply(img, 2, 4, 0);
    CHECK(memcmp(img, img + 4, 4 * sizeof *img) == 0);
    float mean[2] = {5, 1}, sd[2] = {0.5f, 2};
    normalize_apply(img, 2, 4, mean, sd);
    CHECK_NEAR(img[0], -3, 1e-6);
    CHECK_NEAR(img[7], 2.75, 1e-6);
}

/* Invalid pixels and NaN become the band mean (normalized to 0). */
TEST(prepare_scales_and_fills)
{
    float d[4] = {10000, NAN, 2000, 500};
    uint8_t valid[4] = {1, 1, 1, 0};
    float mean[1] = {0.125f};
    mc_prepare(d, valid, 1, 4, 10000, mean);
    CHECK_NEAR(d[0], 1.0, 1e-7);
    CHECK(d[1] == 0.125f && d[3] == 0.125f);
    CHECK_NEAR(d[2], 0.2, 1e-7);
}

/* ---- per-view probabilities ------------------------------------------- */

TEST(view_probabilities_follow_dino)
{
    mc_config cfg;
    CHECK(mc_recipe(&cfg, "dino") == 0);
    const int N = 4000, C = 4;
    int blur[3] = {0}, sol[3] = {0}, col[3] = {0}, jit = 0, flip = 0, ssr = 0;
    float b[4], c[4];
    for (int s = 0; s < N; s++)
        for (int v = 0; v < 3; v++) { /* global 1, global 2, a local */
            rng r;
            rng_init(&r, 3, 0, (uint64_t)s, (uint64_t)v);
            mc_view_info info;
            mc_draw_view(&cfg, C, 120, 120, v == 2 ? cfg.n_global : v, &r, &info, b, c);
            blur[v] += info.blur, sol[v] += info.solarize, col[v] += info.collapse;
            jit += info.jitter, flip += info.geom.flip, ssr += info.geom.ssr;
            if (info.blur)
                CHECK(info.sigma >= 0.1 && info.sigma < 2.0);
            if (info.jitter)
                CHECK(b[0] >= 0.6f && b[0] <= 1.4f && c[C - 1] >= 0.6f && c[C - 1] <= 1.4f);
        }
    /* 5 binomial sigmas at N = 4000: 0.040 for p = 0.5, 0.032 for p = 0.2 */
#define RATE(k, n, p) CHECK_MSG(fabs((double)(k) / (n) - (p)) < 0.04, #k " = %d of %d", k, n)
    CHECK(blur[0] == N);
    RATE(blur[1], N, 0.1);
    RATE(blur[2], N, 0.5);
    CHECK(sol[0] == 0 && sol[2] == 0);
    RATE(sol[1], N, 0.2);
    RATE(col[0], N, 0.2);
    RATE(col[2], N, 0.2);
    RATE(jit, 3 * N, 0.8);
    RATE(flip, 3 * N, 0.5);
    CHECK(ssr == 0);
    /* the Sentinel-2 recipe: shift-scale-rotate half the time, collapse always on global 1 */
    CHECK(mc_recipe(&cfg, "s2") == 0);
    int col1 = 0;
    ssr = 0;
    for (int s = 0; s < N; s++) {
        rng r;
        rng_init(&r, 3, 1, (uint64_t)s, 0);
        mc_view_info info;
        mc_draw_view(&cfg, C, 120, 120, 0, &r, &info, b, c);
        col1 += info.collapse, ssr += info.geom.ssr;
        if (info.geom.ssr)
            CHECK(fabs(info.angle) <= 45 && fabs(info.dx) <= 0.0625 &&
                  fabs(info.ssr_scale - 1) <= 0.1);
    }
    CHECK(col1 == N);
    RATE(ssr, N, 0.5);
    CHECK(mc_recipe(&cfg, "imagenet") == -1);
}

/* Every view depends only on (seed, epoch, sample, view): making samples in
 * any order, on any number of threads, gives the same bytes. */
TEST(sample_views_independent_of_threads)
{
    mc_config cfg;
    mc_recipe(&cfg, "s2");
    cfg.global_size = 24, cfg.local_size = 12;
    const int C = 3, H = 40, W = 44, S = 12;
    float *src = pattern(C, H, W);
    float mean[3] = {100, 1100, 2100}, sd[3] = {300, 300, 300};
    mc_source ms = {src, C, H, W, mean, sd};
    size_t gsz = (size_t)cfg.n_global * C * 24 * 24, lsz = (size_t)cfg.n_local * C * 12 * 12;
    float *out[2];
    for (int run = 0; run < 2; run++) {
        out[run] = calloc(S * (gsz + lsz), sizeof(float));
        int threads = run == 0 ? 1 : 3, failed = 0;
#pragma omp parallel num_threads(threads)
        {
            mc_scratch s;
            gd_err err;
            if (mc_scratch_init(&s, &cfg, C, &err) < 0) {
#pragma omp atomic write
                failed = 1;
            } else {
#pragma omp for schedule(dynamic)
                for (int k = 0; k < S; k++) {
                    int i = run == 0 ? k : S - 1 - k; /* reverse order too */
                    float *base = out[run] + (size_t)i * (gsz + lsz);
                    mc_make_sample(&cfg, &ms, 99, 2, (uint64_t)i, &s, base, base + gsz);
                }
                mc_scratch_free(&s);
            }
        }
        CHECK(!failed);
    }
    int same = memcmp(out[0], out[1], S * (gsz + lsz) * sizeof(float)) == 0;
    /* and a different epoch gives different views */
    mc_scratch s;
    gd_err err;
    CHECK(mc_scratch_init(&s, &cfg, C, &err) == 0);
    float *other = calloc(gsz + lsz, sizeof(float));
    mc_make_sample(&cfg, &ms, 99, 3, 0, &s, other, other + gsz);
    int differs = memcmp(other, out[0], (gsz + lsz) * sizeof(float)) != 0;
    mc_scratch_free(&s);
    free(src), free(out[0]), free(out[1]), free(other);
    CHECK(same);
    CHECK(differs);
}

/* ---- half precision --------------------------------------------------- */

static float f(uint32_t bits)
{
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

TEST(f16_known_values)
{
    CHECK(f32_to_f16(1.0f) == 0x3c00);
    CHECK(f32_to_f16(-2.0f) == 0xc000);
    CHECK(f32_to_f16(0.0f) == 0x0000);
    CHECK(f32_to_f16(-0.0f) == 0x8000);
    CHECK(f32_to_f16(65504.0f) == 0x7bff);
    CHECK(f32_to_f16(65519.0f) == 0x7bff);
    CHECK(f32_to_f16(65520.0f) == 0x7c00); /* the tie rounds to even: infinity */
    CHECK(f32_to_f16(INFINITY) == 0x7c00);
    CHECK(f32_to_f16(-INFINITY) == 0xfc00);
    uint16_t n = f32_to_f16(NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
    CHECK(f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);       /* tie, even below */
    CHECK(f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);   /* tie, even above */
    CHECK(f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);
    CHECK(f32_to_f16(0x1p-14f) == 0x0400);              /* smallest normal */
    CHECK(f32_to_f16(0x1p-24f) == 0x0001);              /* smallest subnormal */
    CHECK(f32_to_f16(0x1p-25f) == 0x0000);              /* tie to even: zero */
    CHECK(f32_to_f16(3 * 0x1p-25f) == 0x0002);          /* tie to even: 2 */
    CHECK(f32_to_f16(0x1p-14f - 0x1p-25f) == 0x0400);   /* rounds up into the normals */
    /* every finite half survives the round trip */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue;
        CHECK_MSG(f32_to_f16(f16_to_f32((uint16_t)h)) == h, "half 0x%04x", h);
    }
    CHECK(f16_to_f32(0x3555) == f(0x3eaaa000)); /* 0.33325195 */
}

#if defined(__FLT16_MAX__)
/* The compiler's float -> _Float16 conversion rounds to nearest even. */
TEST(f16_matches_compiler_float16)
{
    rng r;
    rng_init(&r, 5, 0, 0, 0);
    for (int k = 0; k < 200000; k++) {
        float x = f((uint32_t)rng_next(&r));
        if (isnan(x))
            continue;
        _Float16 h = (_Float16)x;
        uint16_t bits;
        memcpy(&bits, &h, 2);
        CHECK_MSG(f32_to_f16(x) == bits, "%a: 0x%04x vs 0x%04x", x, f32_to_f16(x), bits);
    }
}
#endif

TEST(bf16_known_values)
{
    CHECK(f32_to_bf16(1.0f) == 0x3f80);
    CHECK(f32_to_bf16(-1.0f) == 0xbf80);
    CHECK(f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);            /* tie, even below */
    CHECK(f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);        /* tie, even above */
    CHECK(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
    CHECK(f32_to_bf16(f(0x7f7fffff)) == 0x7f80);             /* FLT_MAX rounds to infinity */
    CHECK(f32_to_bf16(INFINITY) == 0x7f80);
    uint16_t n = f32_to_bf16(f(0x7f800001)); /* a NaN whose payload would round away */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    CHECK(bf16_to_f32(0x4049) == 3.140625f);
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f))
            continue;
        CHECK(f32_to_bf16(bf16_to_f32((uint16_t)h)) == h);
    }
}

/* The per-row/per-column taps used without rotation equal the per-pixel
 * taps of the general path (an identity shift-scale-rotate). */
TEST(warp_separable_taps_equal_general_taps)
{
    rng r;
    rng_init(&r, 11, 0, 0, 0);
    const double scale[2] = {0.05, 1}, ratio[2] = {0.75, 4.0 / 3};
    for (int k = 0; k < 50; k++) {
        view_geom a;
        memset(&a, 0, sizeof a);
        rrc_sample(&r, 97, 131, scale, ratio, &a.crop);
        a.out_h = a.out_w = 1 + (int)rng_below(&r, 64);
        a.flip = rng_bernoulli(&r, 0.5);
        view_geom b = a;
        b.ssr = true;
        double id[6] = {1, 0, 0, 0, 1, 0};
        memcpy(b.inv, id, sizeof id);
        size_t n = (size_t)a.out_h * a.out_w;
        warp_tap *ta = malloc(n * sizeof *ta), *tb = malloc(n * sizeof *tb);
        warp_taps(&a, 131, ta);
        warp_taps(&b, 131, tb);
        int bad = 0;
        for (size_t p = 0; p < n; p++)
            bad += ta[p].off != tb[p].off || ta[p].dx != tb[p].dx || ta[p].dy != tb[p].dy ||
                   ta[p].fx != tb[p].fx || ta[p].fy != tb[p].fy;
        free(ta), free(tb);
        CHECK_MSG(bad == 0, "view %d: %d taps differ", k, bad);
    }
}

/* The separable warp gives the general warp's values up to rounding, and
 * exact copies and mirrors stay exact. */
TEST(warp_separable_matches_general)
{
    const int C = 3, H = 37, W = 53;
    float *src = pattern(C, H, W);
    float *buf = malloc(W * sizeof *buf);
    rng r;
    rng_init(&r, 12, 0, 0, 0);
    const double scale[2] = {0.05, 1}, ratio[2] = {0.75, 4.0 / 3};
    for (int k = 0; k < 60; k++) {
        view_geom g;
        memset(&g, 0, sizeof g);
        if (k == 0)
            g.crop = (crop_box){0, 0, H, W}, g.out_h = H, g.out_w = W;
        else {
            rrc_sample(&r, H, W, scale, ratio, &g.crop);
            g.out_h = g.out_w = 1 + (int)rng_below(&r, 80);
        }
        g.flip = k % 2;
        size_t n = (size_t)g.out_h * g.out_w;
        axis_tap cols[80 > W ? 80 : W], rows[80 > H ? 80 : H];
        float *a = warp(src, C, H, W, &g), *b = malloc(C * n * sizeof *b);
        warp_axes(&g, cols, rows);
        warp_apply_axes(src, C, H, W, &g, cols, rows, buf, b);
        double worst = 0;
        for (size_t p = 0; p < C * n; p++)
            worst = fmax(worst, fabs(a[p] - b[p]));
        int exact = k > 1 || memcmp(a, b, C * n * sizeof *a) == 0;
        free(a), free(b);
        CHECK_MSG(worst < 1e-3, "view %d: differs by %g", k, worst); /* values up to ~3000 */
        CHECK_MSG(exact, "view %d: identity/mirror not exact", k);
    }
    free(src), free(buf);
}

/* Bicubic: Keys' kernel with a = -0.75 worked by hand.  Upsampling 8 -> 16
 * columns puts output column 3 at x = 1.25 (t = 0.25: weights -0.10546875,
 * 0.87890625, 0.26171875, -0.03515625) and column 0 at x = -0.25 (taps
 * -2..1 clamped to 0, 0, 0, 1).  For f(x) = x that gives 1.296875 and
 * -0.10546875.  At its own size a crop is copied exactly. */
TEST(bicubic_known_values)
{
    const int H = 4, W = 8;
    float src[4 * 8];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            src[y * W + x] = (float)x;
    view_geom g = full_geom(H, 16);
    g.crop = (crop_box){0, 0, H, W};
    float dst[4 * 16];
    warp_apply_bicubic(src, 1, H, W, &g, dst);
    for (int y = 0; y < H; y++) {
        CHECK_NEAR(dst[y * 16 + 3], 1.296875, 1e-6);
        CHECK_NEAR(dst[y * 16 + 0], -0.10546875, 1e-6);
        CHECK_NEAR(dst[y * 16 + 15], 7.10546875, 1e-6); /* the mirror image at the right */
    }
    float *p = pattern(2, 9, 11), *id = malloc(2 * 9 * 11 * sizeof *id);
    view_geom f = full_geom(9, 11);
    f.flip = true;
    warp_apply_bicubic(p, 2, 9, 11, &f, id);
    int bad = 0;
    for (int c = 0; c < 2; c++)
        for (int y = 0; y < 9; y++)
            for (int x = 0; x < 11; x++)
                bad += AT(id, c, y, x, 9, 11) != AT(p, c, y, 10 - x, 9, 11);
    free(p), free(id);
    CHECK(bad == 0);
}

/* The weights sum to one: a constant stays constant through any crop,
 * rotation and scale. */
TEST(bicubic_preserves_constants)
{
    const int H = 30, W = 40;
    float *src = malloc(H * W * sizeof *src), *dst = malloc(64 * 64 * sizeof *dst);
    for (int i = 0; i < H * W; i++)
        src[i] = 0.37f;
    rng r;
    rng_init(&r, 13, 0, 0, 0);
    const double scale[2] = {0.05, 1}, ratio[2] = {0.75, 4.0 / 3};
    for (int k = 0; k < 20; k++) {
        view_geom g;
        memset(&g, 0, sizeof g);
        rrc_sample(&r, H, W, scale, ratio, &g.crop);
        g.out_h = g.out_w = 64;
        view_geom_set_ssr(&g, rng_range(&r, -45, 45), rng_range(&r, 0.9, 1.1), 0.05, -0.05);
        warp_apply_bicubic(src, 1, H, W, &g, dst);
        for (int i = 0; i < 64 * 64; i++)
            CHECK_NEAR(dst[i], 0.37, 1e-6);
    }
    free(src), free(dst);
}

/* A range of a float tensor as float32 (the trainer stages views with it):
 * f4 copied, f2 converted, a range past the end or an integer tensor
 * refused. */
TEST(tensor_range_to_f32_bounds_and_dtypes)
{
    msg *m = msg_new("t");
    tensor *a = m ? msg_add_tensor(m, "a", DT_F4, 1, (int64_t[]){5}) : NULL;
    tensor *h = a ? msg_add_tensor(m, "h", DT_F2, 1, (int64_t[]){5}) : NULL;
    tensor *u = h ? msg_add_tensor(m, "u", DT_U2, 1, (int64_t[]){5}) : NULL;
    CHECK(u != NULL);
    if (!u)
        return;
    for (int i = 0; i < 5; i++) {
        ((float *)a->data)[i] = (float)i + 0.5f;
        ((uint16_t *)h->data)[i] = f32_to_f16((float)-i);
    }
    float out[5] = {-1, -1, -1, -1, -1};
    CHECK(tensor_range_to_f32(a, 2, 3, out) == 0);
    CHECK(out[0] == 2.5f && out[1] == 3.5f && out[2] == 4.5f && out[3] == -1);
    CHECK(tensor_range_to_f32(h, 1, 2, out) == 0);
    CHECK(out[0] == -1.0f && out[1] == -2.0f && out[2] == 4.5f);
    CHECK(tensor_range_to_f32(a, 5, 0, out) == 0);
    CHECK(tensor_range_to_f32(a, 3, 3, out) == -1);
    CHECK(tensor_range_to_f32(a, 6, 0, out) == -1);
    CHECK(tensor_range_to_f32(a, 1, SIZE_MAX, out) == -1);
    CHECK(tensor_range_to_f32(u, 0, 1, out) == -1);
    msg_free(m);
}
