/* libcommon/mpa.c against hand-computed values: pseudo-label thresholds,
 * domain prototypes, the mutual bank and its momentum update, IoU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mpa.h"
#include "test.h"

TEST(mpa_thresholds_on_a_constructed_confidence_map)
{
    /* class 0: 0.2 0.4 0.6 0.8 (median 0.5); class 1: 0.95 0.97 0.99 (median
     * 0.97, capped at 0.9); class 2: never predicted */
    float conf[7] = {0.8f, 0.95f, 0.2f, 0.99f, 0.6f, 0.97f, 0.4f};
    uint8_t pred[7] = {0, 1, 0, 1, 0, 1, 0}, out[7];
    double th[3];
    size_t count[3];
    CHECK(mpa_thresholds(conf, pred, 7, 3, 0.9, th, count) == 0);
    CHECK_NEAR(th[0], 0.5, 1e-7);
    CHECK_NEAR(th[1], 0.9, 0);
    CHECK(isnan(th[2]));
    CHECK(count[0] == 4 && count[1] == 3 && count[2] == 0);
    mpa_apply_thresholds(conf, pred, 7, th, 255, out);
    uint8_t want[7] = {0, 1, 255, 1, 0, 1, 255};
    CHECK(memcmp(out, want, 7) == 0);
    /* odd count: the middle value; a cap above it changes nothing */
    CHECK(mpa_thresholds(conf, pred, 7, 3, 1.0, th, count) == 0);
    CHECK_NEAR(th[1], 0.97, 1e-7);
}

TEST(mpa_domain_prototypes_mean_of_image_means)
{
    /* K = 2, D = 2.  Image 1: class 0 sums (2, 4) over 2 tokens -> (1, 2);
     * class 1 absent.  Image 2: class 0 (3, 3) over 1 -> (3, 3); class 1
     * (8, 0) over 4 -> (2, 0).  Domain: class 0 = ((1,2) + (3,3)) / 2 =
     * (2, 2.5) (image means, not token means); class 1 = (2, 0). */
    mpa_domain d;
    CHECK(mpa_domain_init(&d, 2, 2) == 0);
    float s1[4] = {2, 4, 0, 0}, c1[2] = {2, 0}, s2[4] = {3, 3, 8, 0}, c2[2] = {1, 4};
    mpa_domain_add_image(&d, s1, c1);
    mpa_domain_add_image(&d, s2, c2);
    float p[4];
    uint8_t present[2];
    mpa_domain_means(&d, p, present);
    CHECK(present[0] && present[1]);
    CHECK_NEAR(p[0], 2, 1e-7);
    CHECK_NEAR(p[1], 2.5, 1e-7);
    CHECK_NEAR(p[2], 2, 1e-7);
    CHECK_NEAR(p[3], 0, 0);
    mpa_domain_free(&d);
}

TEST(mpa_mutual_bank_takes_the_other_domain_for_a_missing_class)
{
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {3, 4, 9, 9, 7, 8}, out[6];
    uint8_t pa[3] = {1, 1, 0}, pb[3] = {1, 0, 0}, pr[3];
    mpa_mutual(a, pa, b, pb, 3, 2, out, pr);
    float want[6] = {2, 3, 3, 4, 0, 0};
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(out[i], want[i], 0);
    CHECK(pr[0] && pr[1] && !pr[2]);
}

TEST(mpa_bank_update_per_dimension_momentum)
{
    /* class 0: bank (1, 2), batch mean (3, 6) / 3 = (1, 2)... use (9, 12) / 3 = (3, 4):
     * 0.9 (1, 2) + 0.1 (3, 4) = (1.2, 2.2).  class 1: no pixels, unchanged.
     * class 2: absent from the bank, takes the batch mean (5, -1). */
    float bank[6] = {1, 2, 7, 7, 0, 0};
    uint8_t present[3] = {1, 1, 0};
    double sums[6] = {9, 12, 0, 0, 10, -2}, counts[3] = {3, 0, 2};
    CHECK(mpa_bank_update(bank, present, sums, counts, 3, 2, 0.9) == 2);
    float want[6] = {1.2f, 2.2f, 7, 7, 5, -1};
    for (int i = 0; i < 6; i++)
        CHECK_NEAR(bank[i], want[i], 1e-6);
    CHECK(present[2]);
}

TEST(mpa_iou_from_a_hand_made_confusion)
{
    /* labels   0 0 0 1 1 2 255 2
     * preds    0 1 0 1 1 1 0   0 */
    uint8_t lab[8] = {0, 0, 0, 1, 1, 2, 255, 2}, pred[8] = {0, 1, 0, 1, 1, 1, 0, 0};
    uint64_t conf[16] = {0};
    mpa_confusion_add(conf, lab, pred, 8, 4, 255);
    CHECK(conf[0 * 4 + 0] == 2 && conf[0 * 4 + 1] == 1 && conf[1 * 4 + 1] == 2);
    CHECK(conf[2 * 4 + 1] == 1 && conf[2 * 4 + 0] == 1);
    double iou[4], miou, acc;
    mpa_iou(conf, 4, iou, &miou, &acc);
    /* class 0: TP 2, FP 1 (a 2), FN 1 -> 2/4; class 1: TP 2, FP 2, FN 0 -> 2/4;
     * class 2: TP 0 -> 0; class 3: nowhere -> NaN, left out of the mean */
    CHECK_NEAR(iou[0], 0.5, 1e-12);
    CHECK_NEAR(iou[1], 0.5, 1e-12);
    CHECK_NEAR(iou[2], 0, 0);
    CHECK(isnan(iou[3]));
    CHECK_NEAR(miou, 1.0 / 3, 1e-12);
    CHECK_NEAR(acc, 4.0 / 7, 1e-12);
}
