/* gpu.h: the harness of the GPU checks.  Each check runs an op on the CPU
 * reference backend and on the CUDA backend with the same inputs and
 * compares the outputs: ||gpu - cpu||_2 / ||cpu||_2 under a tolerance
 * (1e-5 in fp32; for GEMM products 1e-3 in tf32 and 1e-2 in bf16: see
 * gpu.c).  Outputs an op overwrites start as NaN on both sides, so an
 * element the GPU leaves unwritten shows; outputs an op accumulates into
 * start from the same random values.  Checks use the unit runner
 * (tests/unit/test.h); without a GPU each says "skipped: no GPU". */
#ifndef GD_TEST_GPU_H
#define GD_TEST_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "ops.h"
#include "rng.h"
#include "../unit/test.h"

#define TOL_FP32 1e-5
#define TOL_TF32 1e-3
#define TOL_BF16 1e-2
/* A whole DINO step in tf32 chains a dozen GEMMs forward and backward:
 * its gradients were 0.84e-3 and 1.22e-3 off the CPU's on the CUDA
 * emulator, the two figures differing only in the GEMM's float summation
 * order, i.e. 3-4 times one GEMM's 2.9e-4.  1e-3 would fail by chance;
 * 3e-3 is 2.5 times the larger.  bf16 by the same count: 6.6e-3 for the
 * small model, 9.2e-3 and 9.6e-3 for the two recipes (12 blocks), against
 * one GEMM's 2.4e-3; TOL_BF16 would leave 4%, so 2.5e-2. */
#define TOL_STEP_TF32 3e-3
#define TOL_STEP_BF16 2.5e-2

/* One array on both sides: its initial host values, the CPU's buffer and
 * the GPU's. */
typedef struct pair {
    size_t n;
    float *h, *dev[2];
} pair;

#define CPU 0
#define GPU 1
/* each side of a check whose gpu_test is named t, and its backend */
#define SIDES(s) for (int s = 0; s < 2; s++)
#define BE(s) (t.be[s])
#define MAX_PAIRS 64

typedef struct gpu_test {
    gd_backend *be[2]; /* CPU, GPU */
    rng r;
    pair pairs[MAX_PAIRS];
    int npairs;
} gpu_test;

/* The CUDA backend in `precision` (opened once per run, closed at exit)
 * next to the CPU one; false, with the test marked skipped, without a GPU. */
bool gpu_begin(gpu_test *t, const char *precision, unsigned seed);
/* GD_GPU_SELFTEST=1: the "GPU" side is the CPU backend too, so that the
 * checks themselves (shapes, buffers, NaN rules) can be run where there is
 * no GPU.  Every difference is then zero: it proves the harness, never
 * the CUDA backend.  Checks that call CUDA directly skip. */
bool gpu_selftest(void);
/* Releases every pair. */
void gpu_end(gpu_test *t);

/* normal(0, sd) inputs; NaN outputs; normal(0, sd) accumulators */
pair *pair_in(gpu_test *t, size_t n, double sd);
pair *pair_out(gpu_test *t, size_t n);
pair *pair_acc(gpu_test *t, size_t n, double sd);
/* the same host values on both sides */
pair *pair_from(gpu_test *t, const float *h, size_t n);
#define D(p, s) ((p)->dev[s])

/* Waits for both sides; false (test failed) when one reports an error. */
bool gpu_sync(gpu_test *t, const char *file, int line);
#define SYNC(t)                                                                   \
    do {                                                                          \
        if (!gpu_sync((t), __FILE__, __LINE__))                                   \
            return;                                                               \
    } while (0)

/* ||gpu - cpu|| / ||cpu|| over the elements that are finite on the CPU
 * side; INFINITY when the two sides disagree on which are finite. */
double pair_err(gpu_test *t, pair *p);
bool pair_close(gpu_test *t, pair *p, double tol, const char *label, const char *file, int line);
#define CHECK_CLOSE(t, p, tol, ...)                                               \
    do {                                                                          \
        char l_[160];                                                             \
        snprintf(l_, sizeof l_, __VA_ARGS__);                                     \
        if (!pair_close((t), (p), (tol), l_, __FILE__, __LINE__))                  \
            return;                                                               \
    } while (0)

/* true when every element of the CPU's copy of p is finite: an output the
 * op overwrites must come out written on the CPU side too, so that a
 * shape the check gets wrong shows even in the self-test */
bool pair_cpu_finite(gpu_test *t, pair *p);
#define CHECK_WRITTEN(t, p, what) CHECK_MSG(pair_cpu_finite((t), (p)), "%s: not all written", what)

/* Relative L2 error of host arrays (the same rules as pair_err). */
double rel_err(const float *gpu, const float *cpu, size_t n);
/* With GD_VERBOSE set: " [label err]" on the test's line. */
void note_err(const char *label, double e);

#endif
