/* dmlp_ops.h: the CPU backend's deformable-MLP ops (ops.h, "deformable
 * MLP"), wired into the table in cpu_ops.c. */
#ifndef GD_DMLP_OPS_H
#define GD_DMLP_OPS_H

#include "ops.h"

void cpu_dwconv3_fwd(gd_backend *be, float *y, const float *x, const float *w, const float *bias,
                     int B, int H, int W, int C);
void cpu_dwconv3_bwd(gd_backend *be, float *dx, float *dw, float *dbias, const float *dy,
                     const float *x, const float *w, int B, int H, int W, int C);
void cpu_deform_sample_fwd(gd_backend *be, float *y, const float *x, const float *om, int B,
                           int H, int W, int C, float max_off);
void cpu_deform_sample_bwd(gd_backend *be, float *dx, float *dom, const float *dy,
                           const float *x, const float *om, int B, int H, int W, int C,
                           float max_off);

#endif
