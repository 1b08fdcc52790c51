/* device.h: the CUDA side of geodino, as plain C.  For now: finding the
 * GPU and one kernel to prove the build, link and launch path; the ops of
 * kernels/ops.h arrive with the CUDA backend. */
#ifndef GD_CUDA_DEVICE_H
#define GD_CUDA_DEVICE_H

#include <stddef.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 (with the reason in err) when there is
 * no GPU or no driver, which is not an error for a caller that can fall
 * back to the CPU. */
int gd_cuda_device_count(gd_err *err);

/* One line describing device `index` (name, memory, compute capability). */
int gd_cuda_describe(int index, char *buf, size_t len, gd_err *err);

/* y[i] = a * x[i] + y[i] on the GPU, for n floats in host memory: uploads,
 * launches, downloads, checks every step. */
int gd_cuda_saxpy(float a, const float *x, float *y, size_t n, gd_err *err);

#ifdef __cplusplus
}
#endif

#endif
