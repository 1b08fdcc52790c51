/* mpa.h: the host-side pieces of Mutual Prototypical Adaptation and of
 * segmentation evaluation: pseudo-label thresholds, class prototypes and
 * their bank, confusion matrices and IoU.  Small arrays, plain loops. */
#ifndef GD_MPA_H
#define GD_MPA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Per-class confidence thresholds for pseudo-labels: thresh[c] = the
 * median (numpy's: the mean of the two middle values for an even count)
 * of conf over the n pixels predicted c, capped at max_thresh; NaN when
 * no pixel is predicted c.  count[c] gets that number of pixels.
 * Returns 0, -1 when out of memory. */
int mpa_thresholds(const float *conf, const uint8_t *pred, size_t n, int K, double max_thresh,
                   double *thresh, size_t *count);

/* out[i] = pred[i] where conf[i] >= thresh[pred[i]], else ignore. */
void mpa_apply_thresholds(const float *conf, const uint8_t *pred, size_t n, const double *thresh,
                          uint8_t ignore, uint8_t *out);

/* One domain's prototypes: the mean over images of each image's class
 * mean.  add_image takes one image's per-class sums [K, D] and counts [K]
 * (classes with count 0 are absent from the image). */
typedef struct mpa_domain {
    int K, D;
    double *sum;      /* [K, D]: sum over images of the image's class means */
    long *images;     /* [K]: images in which the class is present */
} mpa_domain;
int mpa_domain_init(mpa_domain *d, int K, int D);
void mpa_domain_add_image(mpa_domain *d, const float *sums, const float *counts);
/* protos [K, D] (zero where absent), present [K] */
void mpa_domain_means(const mpa_domain *d, float *protos, uint8_t *present);
void mpa_domain_free(mpa_domain *d);

/* The mutual bank: the mean of the two domains' prototypes where both
 * have the class, the one domain's where only it does, zero (absent)
 * where neither. */
void mpa_mutual(const float *a, const uint8_t *pa, const float *b, const uint8_t *pb, int K,
                int D, float *out, uint8_t *present);

/* bank[c] = m bank[c] + (1 - m) sums[c] / counts[c] for every class with
 * counts[c] > 0 (a per-dimension vector mean); a class absent from the
 * bank (present[c] == 0) takes the batch mean outright and becomes
 * present.  Returns the number of classes updated. */
int mpa_bank_update(float *bank, uint8_t *present, const double *sums, const double *counts,
                    int K, int D, double m);

/* conf[t * K + p] += pixels with label t and prediction p (labels equal
 * to ignore are skipped). */
void mpa_confusion_add(uint64_t *conf, const uint8_t *label, const uint8_t *pred, size_t n, int K,
                       uint8_t ignore);
/* iou[c] = TP / (TP + FP + FN), NaN when the class is in neither labels
 * nor predictions; *miou = mean of the non-NaN ones (NaN when none);
 * *acc = trace / total (NaN when empty). */
void mpa_iou(const uint64_t *conf, int K, double *iou, double *miou, double *acc);

#endif
