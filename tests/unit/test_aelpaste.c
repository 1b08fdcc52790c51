/* Unit tests of aelpaste: the AEL bank, class sampling, copy-paste,
 * connected components and cutmix boxes, on hand-made maps whose expected
 * results are worked out here by hand or by a second, independent rule. */
#include <stdlib.h>

#include "aelpaste.h"
#include "test.h"

/* A label map from rows of characters: '.' = 0, '1'..'9' = ids, 'x' = 255. */
static void draw(uint8_t *lab, const char *const *rows, int h, int w)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            char ch = rows[y][x];
            lab[y * w + x] = ch == '.' ? 0 : ch == 'x' ? 255 : (uint8_t)(ch - '0');
        }
}

TEST(ael_bank_momentum_arithmetic)
{
    double conf[3];
    ael_bank_init(conf, 3, 0.5, 1);
    CHECK(conf[0] == 0.5 && conf[2] == 0.5);
    double means[3] = {0.9, 0.0, 0.2};
    gd_err err;
    CHECK(ael_bank_update(conf, means, 3, 0.9, &err) == 0);
    /* 0.9 * 0.5 + 0.1 * 0.9 = 0.54; absent class: 0.45; 0.45 + 0.02 = 0.47 */
    CHECK_NEAR(conf[0], 0.54, 1e-15);
    CHECK_NEAR(conf[1], 0.45, 1e-15);
    CHECK_NEAR(conf[2], 0.47, 1e-15);
    CHECK(ael_bank_update(conf, means, 3, 0.9, &err) == 0);
    CHECK_NEAR(conf[0], 0.576, 1e-15);   /* 0.486 + 0.09 */
    CHECK_NEAR(conf[1], 0.405, 1e-15);
    double bad[3] = {0.5, 1.5, 0};
    CHECK(ael_bank_update(conf, bad, 3, 0.9, &err) < 0);
    CHECK_STR_CONTAINS(err.msg, "class 1");
    CHECK(ael_bank_update(conf, means, 3, 1.5, &err) < 0);
}

TEST(ael_bank_random_init_in_unit_interval)
{
    double a[50], b[50];
    ael_bank_init(a, 50, -1, 7);
    ael_bank_init(b, 50, -1, 7);
    int distinct = 0;
    for (int k = 0; k < 50; k++) {
        CHECK(a[k] >= 0 && a[k] < 1 && a[k] == b[k]);
        distinct += k > 0 && a[k] != a[k - 1];
    }
    CHECK(distinct == 49);
}

TEST(ael_class_probs_softmax_sqrt)
{
    double conf[4] = {0.0, 0.75, 1.0, 0.19};
    uint8_t cand[4] = {1, 1, 1, 0};
    double p[4];
    CHECK(ael_class_probs(conf, cand, 4, 0.5, p) == 3);
    /* (1 - c)^0.5 = 1, 0.5, 0 */
    double z = exp(1.0) + exp(0.5) + 1.0;
    CHECK_NEAR(p[0], exp(1.0) / z, 1e-14);
    CHECK_NEAR(p[1], exp(0.5) / z, 1e-14);
    CHECK_NEAR(p[2], 1.0 / z, 1e-14);
    CHECK(p[3] == 0);
    /* cutmix's power 1 over all classes: 1, 0.25, 0, 0.81 */
    CHECK(ael_class_probs(conf, NULL, 4, 1.0, p) == 4);
    z = exp(1.0) + exp(0.25) + 1.0 + exp(0.81);
    CHECK_NEAR(p[3], exp(0.81) / z, 1e-14);
    uint8_t none[4] = {0};
    CHECK(ael_class_probs(conf, none, 4, 0.5, p) == 0);
}

/* Pearson's chi-square of observed counts against probabilities. */
static double chi2(const long *obs, const double *p, int k, long n)
{
    double s = 0;
    for (int i = 0; i < k; i++)
        if (p[i] > 0) {
            double e = p[i] * n;
            s += (obs[i] - e) * (obs[i] - e) / e;
        }
    return s;
}

TEST(ael_draw_class_frequencies)
{
    double conf[6] = {0.05, 0.3, 0.6, 0.9, 0.99, 0.5};
    uint8_t cand[6] = {1, 1, 1, 1, 1, 0};   /* class 5 excluded */
    double p[6];
    ael_class_probs(conf, cand, 6, 0.5, p);
    long obs[6] = {0}, n = 200000;
    rng r;
    rng_init(&r, 42, 0, 0, 0);
    for (long i = 0; i < n; i++)
        obs[ael_draw_class(p, 6, &r)]++;
    CHECK(obs[5] == 0);
    /* 4 degrees of freedom: P(chi2 > 18.47) = 0.001 */
    double s = chi2(obs, p, 6, n);
    CHECK_MSG(s < 18.47, "chi-square %g", s);
}

TEST(ael_query_classes_with_replacement_deduplicated)
{
    double conf[4] = {0.1, 0.4, 0.8, 0.95};
    double p[4];
    ael_class_probs(conf, NULL, 4, 0.5, p);
    /* with 3 draws, class k is in the set with probability 1 - (1 - p_k)^3 */
    long in[4] = {0}, n = 100000, total = 0;
    rng r;
    uint8_t chosen[4];
    for (long i = 0; i < n; i++) {
        rng_init(&r, 9, (uint64_t)i, 1, 0);
        int d = ael_query_classes(p, 4, 3, &r, chosen);
        int cnt = 0;
        for (int k = 0; k < 4; k++) {
            in[k] += chosen[k];
            cnt += chosen[k];
        }
        CHECK(d == cnt && d >= 1 && d <= 3);
        total += d;
    }
    for (int k = 0; k < 4; k++) {
        double q = 1 - pow(1 - p[k], 3);
        double sd = sqrt(q * (1 - q) / n);
        CHECK_MSG(fabs((double)in[k] / n - q) < 4.5 * sd, "class %d: %g vs %g", k,
                  (double)in[k] / n, q);
    }
    CHECK(total < 3 * n);   /* duplicates happened and were removed */
}

TEST(ael_copy_paste_exact_and_ignore_never_pasted)
{
    const char *base_rows[] = {"....", ".11.", ".11.", "...."};
    const char *paste_rows[] = {"22xx", "2x33", "..33", "x2.1"};
    ael_sample base, paste, out;
    gd_err err;
    CHECK(ael_sample_alloc(&base, 2, 4, 4, &err) == 0);
    CHECK(ael_sample_alloc(&paste, 2, 4, 4, &err) == 0);
    CHECK(ael_sample_alloc(&out, 2, 4, 4, &err) == 0);
    draw(base.label, base_rows, 4, 4);
    draw(paste.label, paste_rows, 4, 4);
    for (int i = 0; i < 32; i++) {
        base.image[i] = (float)i;
        paste.image[i] = 100.0f + (float)i;
    }
    uint8_t chosen[256] = {0}, mask[16];
    chosen[2] = chosen[255] = 1;  /* asking for the ignore index must not paste it */
    size_t n = ael_copy_paste(&base, &paste, chosen, 256, 255, &out, mask);
    /* by hand: paste 2 at (0,0) (0,1) (1,0) (3,1); everything else is base */
    int pasted[16] = {[0] = 1, [1] = 1, [4] = 1, [13] = 1};
    CHECK(n == 4);
    for (int i = 0; i < 16; i++) {
        CHECK(mask[i] == pasted[i]);
        CHECK(out.label[i] == (pasted[i] ? 2 : base.label[i]));
        for (int b = 0; b < 2; b++)
            CHECK(out.image[b * 16 + i] == (pasted[i] ? 100.0f : 0.0f) + (float)(b * 16 + i));
    }
    for (int i = 0; i < 16; i++)
        CHECK(out.label[i] != 255);
    ael_sample_free(&base), ael_sample_free(&paste), ael_sample_free(&out);
}

TEST(ael_resize_bilinear_by_hand)
{
    const float src[4] = {0, 1, 2, 3};
    float dst[16];
    ael_resize_bilinear(src, 1, 2, 2, dst, 4, 4);
    /* source coordinates (x + .5) / 2 - .5 = 0 (clamped), .25, .75, 1 (clamped) */
    const float w[4] = {0, 0.25f, 0.75f, 1};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            CHECK_NEAR(dst[y * 4 + x], w[x] + 2 * w[y], 1e-6);
    uint8_t lab[4] = {1, 2, 3, 4}, big[16];
    ael_resize_nearest(lab, 2, 2, big, 4, 4);
    CHECK(big[0] == 1 && big[1] == 1 && big[2] == 2 && big[15] == 4 && big[8] == 3);
}

TEST(ael_apply_geom_flip_pad_crop)
{
    ael_sample src, out;
    gd_err err;
    CHECK(ael_sample_alloc(&src, 1, 2, 3, &err) == 0);
    for (int i = 0; i < 6; i++) {
        src.image[i] = (float)(i + 1);
        src.label[i] = (uint8_t)(i + 1);
    }
    /* no resize, flipped, onto a 3x4 base: rows "321x", "654x", "xxxx" */
    ael_geom g = {2, 3, 1, 0, 0};
    CHECK(ael_apply_geom(&src, &g, 3, 4, 255, &out, &err) == 0);
    const uint8_t want[12] = {3, 2, 1, 255, 6, 5, 4, 255, 255, 255, 255, 255};
    for (int i = 0; i < 12; i++) {
        CHECK(out.label[i] == want[i]);
        CHECK(out.image[i] == (want[i] == 255 ? 0.0f : (float)want[i]));
    }
    ael_sample_free(&out);
    /* crop of a larger sample: 2x3 into 1x2 at (1, 1), not flipped -> 5 6 */
    g = (ael_geom){2, 3, 0, 1, 1};
    CHECK(ael_apply_geom(&src, &g, 1, 2, 255, &out, &err) == 0);
    CHECK(out.label[0] == 5 && out.label[1] == 6 && out.image[1] == 6.0f);
    ael_sample_free(&out);
    ael_sample_free(&src);
}

TEST(ael_draw_geom_ranges)
{
    rng r;
    int flips = 0;
    for (int i = 0; i < 2000; i++) {
        rng_init(&r, 3, (uint64_t)i, 2, 0);
        ael_geom g;
        ael_draw_geom(&r, 100, 80, 64, 64, 0.5, 2.0, 0.5, &g);
        CHECK(g.rh >= 50 && g.rh <= 200 && g.rw >= 40 && g.rw <= 160);
        CHECK(g.oy >= 0 && g.oy <= (g.rh > 64 ? g.rh - 64 : 0));
        CHECK(g.ox >= 0 && g.ox <= (g.rw > 64 ? g.rw - 64 : 0));
        flips += g.flip;
    }
    CHECK(flips > 850 && flips < 1150);
}

TEST(ael_components_hand_drawn)
{
    const char *rows[] = {
        "11...1",
        ".1..1.",
        "...1..",
        "1.....",
        "1..111",
    };
    uint8_t lab[30];
    draw(lab, rows, 5, 6);
    ael_component *c;
    gd_err err;
    long n = ael_components(lab, 5, 6, 1, &c, &err);
    /* the diagonal (0,5)-(1,4)-(2,3) is one component under 8-connectivity */
    CHECK(n == 4);
    CHECK(c[0].area == 3 && c[0].box.y0 == 0 && c[0].box.x0 == 0 && c[0].box.y1 == 2 &&
          c[0].box.x1 == 2);
    CHECK(c[1].area == 3 && c[1].box.y0 == 0 && c[1].box.x0 == 3 && c[1].box.y1 == 3 &&
          c[1].box.x1 == 6);
    CHECK(c[2].area == 2 && c[2].box.y0 == 3 && c[2].box.x0 == 0 && c[2].box.y1 == 5 &&
          c[2].box.x1 == 1);
    CHECK(c[3].area == 3 && c[3].box.y0 == 4 && c[3].box.x0 == 3 && c[3].box.y1 == 5 &&
          c[3].box.x1 == 6);
    free(c);
    CHECK(ael_components(lab, 5, 6, 7, &c, &err) == 0);
    free(c);
}

TEST(ael_cutmix_box_component_or_random)
{
    const char *rows[] = {
        "........",
        ".22.....",
        ".22...2.",
        "........",
        "....222.",
        "....222.",
        "....222.",
        "........",
    };
    uint8_t lab[64];
    draw(lab, rows, 8, 8);
    rng r;
    gd_err err;
    ael_box b;
    /* area > 5 of 64 pixels: only the 3x3 block (area 9) qualifies */
    int hits = 0;
    for (int i = 0; i < 50; i++) {
        rng_init(&r, 1, (uint64_t)i, 3, 0);
        CHECK(ael_cutmix_box(lab, 8, 8, 2, 5.0 / 64, &r, &b, &err) == 1);
        hits += b.y0 == 4 && b.x0 == 4 && b.y1 == 7 && b.x1 == 7;
    }
    CHECK(hits == 50);
    /* area > 0: all three components are drawn */
    int seen[3] = {0};
    for (int i = 0; i < 300; i++) {
        rng_init(&r, 1, (uint64_t)i, 4, 0);
        CHECK(ael_cutmix_box(lab, 8, 8, 2, 0, &r, &b, &err) == 1);
        seen[b.y0 == 1 ? 0 : b.y0 == 2 ? 1 : 2]++;
    }
    CHECK(seen[0] > 60 && seen[1] > 60 && seen[2] > 60);
    /* nothing big enough: an init_cutmix box */
    rng_init(&r, 1, 0, 5, 0);
    CHECK(ael_cutmix_box(lab, 8, 8, 2, 0.5, &r, &b, &err) == 0);
    CHECK(ael_cutmix_box(lab, 8, 8, 9, 0, &r, &b, &err) == 0);
}

TEST(ael_init_cutmix_shape)
{
    rng r;
    double hsum = 0;
    for (int i = 0; i < 5000; i++) {
        rng_init(&r, 5, (uint64_t)i, 0, 0);
        ael_box b;
        ael_init_cutmix(&r, 200, 300, &b);
        int bh = b.y1 - b.y0, bw = b.x1 - b.x0;
        CHECK(b.y0 >= 0 && b.x0 >= 0 && b.y1 <= 200 && b.x1 <= 300);
        CHECK(bh >= 100 && bh <= 200 && bw >= 150 && bw <= 300);
        /* area half the image, within the rounding of each side */
        double fh = bh / 200.0, fw = bw / 300.0;
        CHECK_MSG(fabs(fh * fw - 0.5) < 0.01, "%d x %d", bh, bw);
        hsum += fh;
    }
    /* E[0.5^u] = 0.5 / ln 2 = 0.7213 */
    CHECK_NEAR(hsum / 5000, 0.5 / log(2.0), 0.01);
}

TEST(ael_presence_thresholds)
{
    uint8_t lab[100] = {0};
    for (int i = 0; i < 10; i++)
        lab[i] = 1;
    lab[50] = 2;
    for (int i = 60; i < 80; i++)
        lab[i] = 255;
    uint8_t present[4];
    ael_presence(lab, 100, 4, 255, 0.05, present);
    CHECK(present[0] == 1 && present[1] == 1 && present[2] == 0 && present[3] == 0);
    ael_presence(lab, 100, 4, 255, 0.0, present);
    CHECK(present[2] == 1 && present[3] == 0);
    ael_presence(lab, 100, 4, 0, 0.0, present);   /* ignore index 0 never counts */
    CHECK(present[0] == 0);
}

TEST(ael_cutmix_exact)
{
    ael_sample a, b, out;
    gd_err err;
    CHECK(ael_sample_alloc(&a, 3, 5, 6, &err) == 0);
    CHECK(ael_sample_alloc(&b, 3, 5, 6, &err) == 0);
    CHECK(ael_sample_alloc(&out, 3, 5, 6, &err) == 0);
    for (int i = 0; i < 90; i++)
        a.image[i] = (float)i, b.image[i] = -(float)i - 1;
    for (int i = 0; i < 30; i++)
        a.label[i] = 1, b.label[i] = 2;
    ael_box box = {1, 2, 4, 5};
    uint8_t mask[30];
    ael_cutmix(&a, &b, &box, &out, mask);
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 6; x++) {
            int in = y >= 1 && y < 4 && x >= 2 && x < 5, i = y * 6 + x;
            CHECK(mask[i] == in && out.label[i] == (in ? 2 : 1));
            for (int c = 0; c < 3; c++)
                CHECK(out.image[c * 30 + i] == (in ? b.image : a.image)[c * 30 + i]);
        }
    ael_sample_free(&a), ael_sample_free(&b), ael_sample_free(&out);
}

TEST(ael_means_json)
{
    double m[4];
    gd_err err;
    const char *a = " [0.5, null, 1, 0.25] ";
    CHECK(ael_parse_means_json(a, strlen(a), 4, m, &err) == 0);
    CHECK(m[0] == 0.5 && m[1] == 0 && m[2] == 1 && m[3] == 0.25);
    const char *o = "{\"means\": {\"3\": 0.75, \"0\": 0.125}}";
    CHECK(ael_parse_means_json(o, strlen(o), 4, m, &err) == 0);
    CHECK(m[0] == 0.125 && m[1] == 0 && m[2] == 0 && m[3] == 0.75);
    const char *shortarr = "[0.5, 0.5]";
    CHECK(ael_parse_means_json(shortarr, strlen(shortarr), 4, m, &err) < 0);
    CHECK_STR_CONTAINS(err.msg, "2 values");
    const char *badkey = "{\"7\": 0.5}";
    CHECK(ael_parse_means_json(badkey, strlen(badkey), 4, m, &err) < 0);
    CHECK_STR_CONTAINS(err.msg, "not a class id");
    const char *junk[] = {"", "[", "[0.5,", "{\"0\" 1}", "[1,2,3,4] x", "[nan,1,1,1]", "\"x\""};
    for (size_t k = 0; k < sizeof junk / sizeof *junk; k++)
        CHECK_MSG(ael_parse_means_json(junk[k], strlen(junk[k]), 4, m, &err) < 0, "%s", junk[k]);
    /* A NUL byte is not part of a number (the file is read with its length,
     * so it can hold one). */
    const char nul[] = "[1\0, 1, 1, 1]";
    CHECK(ael_parse_means_json(nul, sizeof nul - 1, 4, m, &err) < 0);
}

/* The direct crop of a resized sample equals resizing the whole sample
 * with ael_resize_* and then flipping, padding and cropping it by hand. */
TEST(ael_apply_geom_resized_matches_resize_then_crop)
{
    ael_sample src, out;
    gd_err err;
    CHECK(ael_sample_alloc(&src, 2, 13, 17, &err) == 0);
    for (int i = 0; i < 2 * 13 * 17; i++)
        src.image[i] = (float)((i * 37) % 101) - 20.0f;
    for (int i = 0; i < 13 * 17; i++)
        src.label[i] = (uint8_t)((i * 7) % 5);
    const ael_geom cases[] = {{26, 34, 0, 5, 9}, {26, 34, 1, 3, 0}, {7, 9, 1, 0, 0}, {20, 11, 0, 4, 0}};
    const int H = 16, W = 12;
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const ael_geom *g = &cases[c];
        float *big = malloc((size_t)2 * g->rh * g->rw * sizeof *big);
        uint8_t *lab = malloc((size_t)g->rh * g->rw);
        ael_resize_bilinear(src.image, 2, 13, 17, big, g->rh, g->rw);
        ael_resize_nearest(src.label, 13, 17, lab, g->rh, g->rw);
        CHECK(ael_apply_geom(&src, g, H, W, 255, &out, &err) == 0);
        int bad = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int sy = g->oy + y, sx = g->ox + x, in = sy < g->rh && sx < g->rw;
                int fx = g->flip ? g->rw - 1 - sx : sx;
                uint8_t wl = in ? lab[sy * g->rw + fx] : 255;
                bad += out.label[y * W + x] != wl;
                for (int b = 0; b < 2; b++) {
                    float wv = in ? big[(b * g->rh + sy) * g->rw + fx] : 0.0f;
                    bad += out.image[(b * H + y) * W + x] != wv;
                }
            }
        free(big), free(lab);
        ael_sample_free(&out);
        CHECK_MSG(bad == 0, "case %zu: %d pixels differ", c, bad);
    }
    ael_sample_free(&src);
}
