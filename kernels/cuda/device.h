/* device.h: the CUDA side of geodino, as plain C: finding the GPU, one
 * kernel that proves the build, link and launch path, and the CUDA backend
 * of kernels/ops.h (cuda_ops.cu). */
#ifndef GD_CUDA_DEVICE_H
#define GD_CUDA_DEVICE_H

#include <stddef.h>

#include "err.h"
#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 (with the reason in err) when there is
 * no GPU or no driver, which is not an error for a caller that can fall
 * back to the CPU. */
int gd_cuda_device_count(gd_err *err);

/* One line describing device `index` (name, memory, compute capability). */
int gd_cuda_describe(int index, char *buf, size_t len, gd_err *err);

/* 1 when device `index` computes in bf16 (compute capability 8.0 or
 * more), 0 when not or when it cannot be asked. */
int gd_cuda_has_bf16(int index);

/* y[i] = a * x[i] + y[i] on the GPU, for n floats in host memory: uploads,
 * launches, downloads, checks every step. */
int gd_cuda_saxpy(float a, const float *x, float *y, size_t n, gd_err *err);

/* The CUDA backend of ops.h on GPU `device`, its GEMMs in `precision`:
 * "fp32" (the parity reference), "tf32" or "bf16" (operands rounded,
 * fp32 accumulation; compute capability 8.0 or more).  Every other op is
 * fp32 with the CPU's float64 accumulations.  NULL with the reason in err
 * (no GPU, no such device, bad precision).  Free with gd_backend_cuda_free. */
gd_backend *gd_backend_cuda(int device, const char *precision, gd_err *err);
void gd_backend_cuda_free(gd_backend *be);
/* "fp32", "tf32" or "bf16" */
const char *gd_backend_cuda_precision(const gd_backend *be);
/* The stream every op of the backend is queued on (a cudaStream_t): what a
 * communicator orders its reductions after (comm.h). */
void *gd_backend_cuda_stream(const gd_backend *be);

#ifdef __cplusplus
}
#endif

#endif
