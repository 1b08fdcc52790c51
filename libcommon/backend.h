/* backend.h: choosing the compute backend at run time.  The one place that
 * knows whether the CUDA backend was built in (GD_HAVE_CUDA, set by the
 * Makefile when nvcc is found): tools name a device and a precision here
 * and get an ops.h table, whatever the build.
 *
 *   device     "auto"   CUDA device 0 when the CUDA backend is built and a
 *                       GPU is present, else the CPU
 *              "cpu"    the CPU reference backend
 *              "cuda"   CUDA device 0; "cuda:N" device N
 *   precision  of the GEMMs: "auto" (bf16 on a GPU that has it, else fp32),
 *              "fp32", "tf32", "bf16" (the last two on the GPU only) */
#ifndef GD_BACKEND_H
#define GD_BACKEND_H

#include <stdbool.h>

#include "err.h"
#include "ops.h"

/* The device a tool uses when no --device is given: the environment
 * variable GEODINO_DEVICE when set and not empty (so that a test suite or
 * a job script can keep every tool on the CPU, or on one GPU, without
 * editing each command), else "auto".  NULL with the reason in err when
 * the variable names no known device. */
const char *gd_backend_default_device(gd_err *err);
/* Whether the names are valid (a usage error when not): known device and
 * precision, and no reduced precision asked of the CPU. */
int gd_backend_check_names(const char *device, const char *precision, gd_err *err);
/* NULL with the reason in err: bad names (as above), CUDA asked for but
 * not built or no GPU, a precision the device does not have. */
gd_backend *gd_backend_open(const char *device, const char *precision, gd_err *err);
/* The backend gd_backend_open would choose for device: "cuda" or "cpu"
 * (names already checked). */
const char *gd_backend_kind(const char *device);
/* The device a data-parallel rank opens: "auto" and "cuda" become
 * "cuda:<local_rank modulo the GPUs present>" when the backend is CUDA, so
 * that the ranks of a node take one GPU each (the NCCL plugin selects the
 * same one); "cpu" and an explicit "cuda:N" stay as they are. */
void gd_backend_rank_device(const char *device, int local_rank, char *out, size_t size);
/* Releases what open created (nothing for the CPU backend); NULL is fine. */
void gd_backend_close(gd_backend *be);
/* true when this build has the CUDA backend */
bool gd_backend_cuda_built(void);
/* the CUDA stream (cudaStream_t) a backend queues its work on; NULL for
 * the CPU backend */
void *gd_backend_stream(const gd_backend *be);
/* the GEMM precision a backend from gd_backend_open runs: "fp32", ... */
const char *gd_backend_precision(const gd_backend *be);

#endif
