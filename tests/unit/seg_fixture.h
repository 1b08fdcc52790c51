/* seg_fixture.h: what the segmentation tests (test_seg.c, test_dmlp.c)
 * share: CPU-backend buffers from host arrays and back, seeded normal
 * fills, and a tiny dino-step checkpoint to build a model on. */
#ifndef GD_TEST_SEG_FIXTURE_H
#define GD_TEST_SEG_FIXTURE_H

#include <stddef.h>

#include "msg.h"
#include "rng.h"
#include "seg.h"

/* A CPU-backend buffer holding h[0..n) */
float *tu_dev_of(const float *h, size_t n);
void tu_host_from(float *h, const float *d, size_t n);
/* x[i] = N(0, sd^2) draws of r */
void tu_fill_normal(rng *r, float *x, size_t n, double sd);
/* A dino-step checkpoint of a ViT with `depth` blocks, embed 8, 2 heads,
 * patch 4, 2 bands (NULL on failure). */
msg *tu_tiny_checkpoint(int depth);
/* The central difference (step h) of the training objective, ce +
 * lambda_proto x proto of seg_batch_loss on these tiles, with respect to
 * the model's device float *x (restored after); NAN when a pass fails. */
double tu_seg_fd(seg_model *s, float *x, double h, const float *img, const uint8_t *lab, int n,
                 int S, const seg_loss_opts *o);

#endif
