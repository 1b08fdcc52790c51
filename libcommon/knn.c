#include "knn.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

#define TEST_BLOCK 256
#define TRAIN_BLOCK 2048

int knn_normalize(knn_set *s, const char *name, gd_err *err)
{
    for (size_t i = 0; i < s->n; i++) {
        float *row = s->x + i * s->dim;
        double sq = 0;
        for (size_t d = 0; d < s->dim; d++) {
            if (!isfinite(row[d]))
                return gd_errf(err, "%s: features row %zu has a non-finite value", name, i);
            sq += (double)row[d] * row[d];
        }
        double norm = sqrt(sq);
        float inv = (float)(1.0 / (norm > 1e-12 ? norm : 1e-12));
        for (size_t d = 0; d < s->dim; d++)
            row[d] *= inv;
    }
    return 0;
}

/* A candidate neighbour; "better" = higher similarity, then lower index. */
typedef struct {
    float sim;
    uint32_t idx;
} neighbour;

static int better(neighbour a, neighbour b)
{
    return a.sim > b.sim || (a.sim == b.sim && a.idx < b.idx);
}

/* A min-heap (worst at the root) of the best k so far. */
static void heap_sift_down(neighbour *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(h[w], h[l]))
            w = l;
        if (r < n && better(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        neighbour t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void heap_offer(neighbour *h, int *n, int k, neighbour c)
{
    if (*n < k) {
        int i = (*n)++;
        h[i] = c;
        while (i > 0 && better(h[(i - 1) / 2], h[i])) { /* sift up: parent must be worse */
            neighbour t = h[i];
            h[i] = h[(i - 1) / 2];
            h[(i - 1) / 2] = t;
            i = (i - 1) / 2;
        }
    } else if (better(c, h[0])) {
        h[0] = c;
        heap_sift_down(h, *n, 0);
    }
}

static int cmp_neighbour(const void *a, const void *b)
{
    neighbour x = *(const neighbour *)a, y = *(const neighbour *)b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

typedef struct {
    const knn_set *train, *test;
    int kmax;
    neighbour *best;     /* [ntest][kmax], sorted best first when done */
    int *count;          /* [ntest] */
} search;

/* One block of test rows against all training rows. */
static int search_block(void *ctx, size_t block, int thread)
{
    search *s = ctx;
    const knn_set *tr = s->train, *te = s->test;
    size_t r0 = block * TEST_BLOCK, rows = te->n - r0 < TEST_BLOCK ? te->n - r0 : TEST_BLOCK;
    float *sim = malloc((size_t)TEST_BLOCK * TRAIN_BLOCK * sizeof *sim);
    if (!sim)
        return 1;
    for (size_t c0 = 0; c0 < tr->n; c0 += TRAIN_BLOCK) {
        size_t cols = tr->n - c0 < TRAIN_BLOCK ? tr->n - c0 : TRAIN_BLOCK;
        /* sim[rows][cols] = test[r0..] . train[c0..]^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)cols, (int)te->dim,
                    1.0f, te->x + r0 * te->dim, (int)te->dim, tr->x + c0 * tr->dim, (int)tr->dim,
                    0.0f, sim, (int)cols);
        for (size_t r = 0; r < rows; r++) {
            neighbour *h = s->best + (r0 + r) * (size_t)s->kmax;
            int *n = &s->count[r0 + r];
            for (size_t c = 0; c < cols; c++)
                heap_offer(h, n, s->kmax, (neighbour){sim[r * cols + c], (uint32_t)(c0 + c)});
        }
    }
    for (size_t r = 0; r < rows; r++)
        qsort(s->best + (r0 + r) * (size_t)s->kmax, (size_t)s->count[r0 + r], sizeof(neighbour),
              cmp_neighbour);
    free(sim);
    return 0;
}

/* Ranks classes by summed weight of the first k neighbours; fills
 * order[0..classes) best first. */
static void vote(const neighbour *nb, int k, const int32_t *labels, double temperature,
                 int classes, double *score, int *order)
{
    for (int c = 0; c < classes; c++) {
        score[c] = 0;
        order[c] = c;
    }
    for (int j = 0; j < k; j++)
        score[labels[nb[j].idx]] += exp(nb[j].sim / temperature);
    /* insertion sort of the top 5 is all that is needed */
    int top = classes < 5 ? classes : 5;
    for (int a = 0; a < top; a++) {
        int w = a;
        for (int c = a + 1; c < classes; c++)
            if (score[order[c]] > score[order[w]] ||
                (score[order[c]] == score[order[w]] && order[c] < order[w]))
                w = c;
        int t = order[a];
        order[a] = order[w];
        order[w] = t;
    }
}

int knn_classify(const knn_set *train, const knn_set *test, int classes, const int *ks, int nk,
                 double temperature, int threads, knn_result *results, gd_err *err)
{
    if (train->dim != test->dim)
        return gd_errf(err, "feature dimensions differ: train %zu, test %zu", train->dim, test->dim);
    if (train->n == 0 || test->n == 0)
        return gd_errf(err, "empty %s set", train->n == 0 ? "training" : "test");
    if (train->n > UINT32_MAX)
        return gd_errf(err, "more than 2^32 training samples");
    int kmax = 0;
    for (int i = 0; i < nk; i++)
        kmax = ks[i] > kmax ? ks[i] : kmax;
    if ((size_t)kmax > train->n)
        kmax = (int)train->n;
    search s = {.train = train, .test = test, .kmax = kmax};
    s.best = malloc(test->n * (size_t)kmax * sizeof *s.best);
    s.count = calloc(test->n, sizeof *s.count);
    double *score = malloc((size_t)classes * sizeof *score);
    int *order = malloc((size_t)classes * sizeof *order);
    int rc = 0;
    if (!s.best || !s.count || !score || !order) {
        rc = gd_errf(err, "out of memory for %zu x %d neighbours", test->n, kmax);
        goto out;
    }
    openblas_set_num_threads(1); /* parallel over test blocks instead */
    size_t blocks = (test->n + TEST_BLOCK - 1) / TEST_BLOCK;
    if (parallel_for(blocks, threads, search_block, &s) != 0) {
        rc = gd_errf(err, "out of memory for similarity blocks");
        goto out;
    }
    for (int i = 0; i < nk; i++) {
        knn_result *res = &results[i];
        *res = (knn_result){.k = ks[i] < kmax ? ks[i] : kmax, .n = test->n, .classes = classes};
        res->confusion = calloc((size_t)classes * classes, sizeof *res->confusion);
        if (!res->confusion) {
            rc = gd_errf(err, "out of memory");
            goto out;
        }
        for (size_t t = 0; t < test->n; t++) {
            vote(s.best + t * (size_t)kmax, res->k, train->labels, temperature, classes, score,
                 order);
            int truth = test->labels[t];
            res->top1 += order[0] == truth;
            /* as DINO: the first min(5, k) ranked classes */
            for (int j = 0; j < 5 && j < res->k && j < classes; j++)
                res->top5 += order[j] == truth;
            res->confusion[(size_t)truth * classes + order[0]]++;
        }
    }
out:
    free(s.best);
    free(s.count);
    free(score);
    free(order);
    return rc;
}

void knn_result_free(knn_result *r)
{
    free(r->confusion);
    r->confusion = NULL;
}
