/* knn.h: DINO's weighted k-nearest-neighbour classifier.
 *
 * Features are L2-normalised; the similarity is the cosine; each test
 * sample's k most similar training samples vote for their class with
 * weight exp(sim / T); classes are ranked by their summed weight.  As in
 * DINO's eval_knn.py.  Ties are broken deterministically: among equal
 * similarities the lower training index ranks first, among equal class
 * scores the lower class id.
 *
 * Similarities come from blocked float32 GEMMs (a block of test rows
 * against a block of training rows), with a running top-k per test row,
 * so memory is O(block^2 + Ntest * kmax), never Ntest x Ntrain. */
#ifndef GD_KNN_H
#define GD_KNN_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct knn_set {
    size_t n, dim;
    float *x;            /* [n][dim], normalised in place by knn_normalize */
    int32_t *labels;     /* [n] */
} knn_set;

typedef struct knn_result {
    int k;
    size_t n;            /* test samples */
    int classes;
    uint64_t top1, top5; /* correct counts (top5 meaningful when classes >= 5) */
    uint64_t *confusion; /* [classes][classes]: row = true class, column = top-1 prediction */
} knn_result;

/* Rows scaled to unit L2 norm (a zero row stays zero, as F.normalize).
 * Returns -1 if a value is not finite, naming the row. */
int knn_normalize(knn_set *s, const char *name, gd_err *err);

/* Runs the classifier for every k in ks[0..nk) in one pass (the top-k of
 * the largest k is computed once; smaller k use its prefix).  results[i]
 * corresponds to ks[i].  threads <= 0: all CPUs. */
int knn_classify(const knn_set *train, const knn_set *test, int classes, const int *ks, int nk,
                 double temperature, int threads, knn_result *results, gd_err *err);

void knn_result_free(knn_result *r);

#endif
