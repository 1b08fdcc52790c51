/* adam.h: torch.optim.AdamW's step (the single-tensor path) and the
 * teacher's EMA, shared by the CPU and CUDA backends: the per-tensor
 * constants, computed once on the host in double, and the update of one
 * element.  Both backends evaluate
 * the same float expressions (the CUDA code is built with --fmad=false),
 * so they give the same bits. */
#ifndef GD_ADAM_H
#define GD_ADAM_H

#include <math.h>

#include "hd.h"

typedef struct gd_adam_consts {
    float decay;     /* 1 - lr wd: decoupled weight decay */
    float step_size; /* lr / (1 - beta1^step) */
    float bc2_sqrt;  /* sqrt(1 - beta2^step) */
} gd_adam_consts;

static inline gd_adam_consts gd_adam_consts_of(float lr, float wd, float beta1, float beta2,
                                               int step)
{
    gd_adam_consts k;
    k.decay = 1.0f - lr * wd;
    k.step_size = (float)(lr / (1.0 - pow(beta1, step)));
    k.bc2_sqrt = (float)sqrt(1.0 - pow(beta2, step));
    return k;
}

/* p decayed, the moments m and v updated in place, the new p returned:
 *   m += (g - m)(1 - beta1), v = beta2 v + (1 - beta2) g^2,
 *   p = p (1 - lr wd) - step_size m / (sqrt(v) / bc2_sqrt + eps) */
GD_HD static inline float gd_adamw_elem(float p, float g, float *m, float *v, float beta1,
                                        float beta2, float eps, gd_adam_consts k)
{
    float mi = *m, vi = *v;
    float pi = p * k.decay;
    mi += (g - mi) * (1.0f - beta1);
    vi = vi * beta2 + (1.0f - beta2) * g * g;
    float denom = sqrtf(vi) / k.bc2_sqrt + eps;
    *m = mi;
    *v = vi;
    return pi - k.step_size * mi / denom;
}

/* the teacher's exponential moving average of the student */
GD_HD static inline float gd_ema_elem(float teacher, float student, float momentum)
{
    return teacher * momentum + (1.0f - momentum) * student;
}

#endif
