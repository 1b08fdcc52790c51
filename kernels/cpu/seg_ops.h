/* seg_ops.h: the CPU backend's segmentation ops (ops.h, "segmentation"),
 * kept in their own file and wired into the table in cpu_ops.c. */
#ifndef GD_SEG_OPS_H
#define GD_SEG_OPS_H

#include "ops.h"

void cpu_bilinear_fwd(gd_backend *be, float *out, const float *in, int B, int h, int w, int H,
                      int W, int C);
void cpu_bilinear_bwd(gd_backend *be, float *din, const float *dout, int B, int h, int w, int H,
                      int W, int C);
void cpu_seg_ce(gd_backend *be, float *loss, float *dlogits, const float *logits,
                const float *labels, const float *weights, int rows, int K, float scale);
void cpu_proto_loss(gd_backend *be, float *loss, float *df, const float *f, const float *protos,
                    const float *labels, int rows, int D, int K, float T, float alpha,
                    float scale);
void cpu_class_sums(gd_backend *be, float *sums, float *counts, const float *f,
                    const float *labels, int rows, int D, int K);

#endif
