/* mpa.c: see mpa.h. */
#include "mpa.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int mpa_thresholds(const float *conf, const uint8_t *pred, size_t n, int K, double max_thresh,
                   double *thresh, size_t *count)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return -1;
    for (int c = 0; c < K; c++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (pred[i] == c)
                v[m++] = conf[i];
        count[c] = m;
        if (m == 0) {
            thresh[c] = NAN;
            continue;
        }
        qsort(v, m, sizeof *v, cmp_float);
        double med = m % 2 ? v[m / 2] : 0.5 * ((double)v[m / 2 - 1] + v[m / 2]);
        thresh[c] = med < max_thresh ? med : max_thresh;
    }
    free(v);
    return 0;
}

void mpa_apply_thresholds(const float *conf, const uint8_t *pred, size_t n, const double *thresh,
                          uint8_t ignore, uint8_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = conf[i] >= thresh[pred[i]] ? pred[i] : ignore;
}

int mpa_domain_init(mpa_domain *d, int K, int D)
{
    d->K = K, d->D = D;
    d->sum = calloc((size_t)K * D, sizeof *d->sum);
    d->images = calloc(K, sizeof *d->images);
    if (!d->sum || !d->images) {
        mpa_domain_free(d);
        return -1;
    }
    return 0;
}

void mpa_domain_add_image(mpa_domain *d, const float *sums, const float *counts)
{
    for (int c = 0; c < d->K; c++) {
        if (!(counts[c] > 0))
            continue;
        d->images[c]++;
        for (int k = 0; k < d->D; k++)
            d->sum[(size_t)c * d->D + k] += (double)sums[(size_t)c * d->D + k] / counts[c];
    }
}

void mpa_domain_means(const mpa_domain *d, float *protos, uint8_t *present)
{
    for (int c = 0; c < d->K; c++) {
        present[c] = d->images[c] > 0;
        for (int k = 0; k < d->D; k++)
            protos[(size_t)c * d->D + k] =
                present[c] ? (float)(d->sum[(size_t)c * d->D + k] / d->images[c]) : 0.0f;
    }
}

void mpa_domain_free(mpa_domain *d)
{
    free(d->sum), free(d->images);
    d->sum = NULL, d->images = NULL;
}

void mpa_mutual(const float *a, const uint8_t *pa, const float *b, const uint8_t *pb, int K,
                int D, float *out, uint8_t *present)
{
    for (int c = 0; c < K; c++) {
        present[c] = pa[c] || pb[c];
        for (int k = 0; k < D; k++) {
            size_t i = (size_t)c * D + k;
            out[i] = pa[c] && pb[c] ? (float)(0.5 * ((double)a[i] + b[i]))
                     : pa[c]        ? a[i]
                     : pb[c]        ? b[i]
                                    : 0.0f;
        }
    }
}

int mpa_bank_update(float *bank, uint8_t *present, const double *sums, const double *counts,
                    int K, int D, double m)
{
    int updated = 0;
    for (int c = 0; c < K; c++) {
        if (!(counts[c] > 0))
            continue;
        double keep = present[c] ? m : 0;
        for (int k = 0; k < D; k++) {
            size_t i = (size_t)c * D + k;
            bank[i] = (float)(keep * bank[i] + (1 - keep) * (sums[i] / counts[c]));
        }
        present[c] = 1;
        updated++;
    }
    return updated;
}

void mpa_confusion_add(uint64_t *conf, const uint8_t *label, const uint8_t *pred, size_t n, int K,
                       uint8_t ignore)
{
    for (size_t i = 0; i < n; i++)
        if (label[i] != ignore && label[i] < K && pred[i] < K)
            conf[(size_t)label[i] * K + pred[i]]++;
}

void mpa_iou(const uint64_t *conf, int K, double *iou, double *miou, double *acc)
{
    uint64_t total = 0, diag = 0;
    double s = 0;
    int n = 0;
    for (int c = 0; c < K; c++) {
        uint64_t tp = conf[(size_t)c * K + c], row = 0, col = 0;
        for (int k = 0; k < K; k++)
            row += conf[(size_t)c * K + k], col += conf[(size_t)k * K + c];
        total += row, diag += tp;
        uint64_t uni = row + col - tp;
        iou[c] = uni ? (double)tp / uni : NAN;
        if (uni)
            s += iou[c], n++;
    }
    *miou = n ? s / n : NAN;
    *acc = total ? (double)diag / total : NAN;
}
