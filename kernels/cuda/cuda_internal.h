/* cuda_internal.h: what the CUDA backend's source files share (C++ only):
 * the backend's context, its error recording and scratch buffers (defined
 * in cuda_ops.cu), and the launch and reduction helpers every op file
 * uses.  Not part of the C interface (device.h). */
#ifndef GD_CUDA_INTERNAL_H
#define GD_CUDA_INTERNAL_H

#include <cmath>
#include <cstdarg>
#include <cstddef>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "ops.h"

namespace gdcu {

enum prec_kind { P_FP32, P_TF32, P_BF16 };

/* Scratch buffers.  Stream order makes it safe for consecutive ops to
 * reuse one; an op that needs several at once takes distinct slots. */
enum ws_slot {
    WS_A, WS_B,                       /* gemm's bf16 operands */
    WS_QKV, WS_ATT, WS_DOUT, WS_DATT, /* attention's bf16 operands */
    WS_COL,                           /* column sums' partial sums */
    WS_ROWS, WS_TMP, WS_RED, WS_LOSS, WS_FLAG,
    WS_SEG,                           /* segmentation losses' partial sums (seg_ops.cu) */
    WS_ADAM,                          /* adamw_ema's table of tensors */
    WS_NSLOTS
};

struct cuda_ctx {
    int device;
    prec_kind prec;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *ws[WS_NSLOTS];
    size_t ws_bytes[WS_NSLOTS];
    bool failed;
    char first[1024]; /* the first recorded error */
};

const int NT = 256;          /* threads per block */
const unsigned MAX_GRID = 65535u * 8u;
/* blocks of a fixed-order float64 reduction (at most) */
const unsigned RED_BLOCKS = 1024;

/* ---- errors and scratch (cuda_ops.cu) ---------------------------------------------- */

/* Records the first failure (printf-style); later ones are dropped. */
__attribute__((format(printf, 2, 3))) void record(cuda_ctx *c, const char *fmt, ...);
void record_failure(cuda_ctx *c, const char *reason, const char *fmt, va_list ap);
/* false (and recorded, "cuda: <op and shapes>: <reason>") on failure */
__attribute__((format(printf, 3, 4))) bool cuda_ok(cuda_ctx *c, cudaError_t e, const char *fmt,
                                                   ...);
/* The backend's context, its device made current. */
cuda_ctx *enter(gd_backend *be);
/* Reports the recorded error (and any CUDA error of the queued work). */
int report(cuda_ctx *c, gd_err *err);
/* A scratch buffer of at least `bytes`; NULL (recorded) on failure. */
void *scratch(cuda_ctx *c, ws_slot s, size_t bytes, const char *op);

/* After every launch: configuration errors show here, faults at sync. */
#define launched(c, ...) cuda_ok((c), cudaGetLastError(), __VA_ARGS__)

inline unsigned grid_for(size_t n)
{
    size_t b = (n + NT - 1) / NT;
    return b > MAX_GRID ? MAX_GRID : (unsigned)(b ? b : 1);
}

#define GRID_STRIDE(i, n)                                                                  \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (size_t)gridDim.x * blockDim.x)

/* An elementwise kernel over n elements on the backend's stream. */
template <class K, class... A> void launch_n(cuda_ctx *c, size_t n, const char *op, K kernel,
                                             A... args)
{
    if (!n)
        return;
    kernel<<<grid_for(n), NT, 0, c->stream>>>(args...);
    launched(c, "%s(n=%zu)", op, n);
}

/* ---- block reductions (blockDim.x a multiple of 32, at most 1024) ---------------- */

struct op_sum {
    __device__ static double apply(double a, double b) { return a + b; }
    __device__ static double init() { return 0.0; }
};
struct op_max {
    __device__ static double apply(double a, double b) { return a > b ? a : b; }
    __device__ static double init() { return -INFINITY; }
};

/* Every thread gets the block's result; callable repeatedly. */
template <class Op> __device__ double block_reduce(double v)
{
    __shared__ double part[32];
    __shared__ double result;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = Op::apply(v, __shfl_down_sync(0xffffffffu, v, o));
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = (int)(blockDim.x + 31) >> 5;
        v = lane < nw ? part[lane] : Op::init();
        for (int o = 16; o > 0; o >>= 1)
            v = Op::apply(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0)
            result = v;
    }
    __syncthreads();
    double r = result;
    __syncthreads(); /* nobody overwrites part/result before all have read */
    return r;
}

__device__ inline double block_sum(double v) { return block_reduce<op_sum>(v); }
__device__ inline double block_max(double v) { return block_reduce<op_max>(v); }

/* ---- column sums: out[i] from sum over r of f.term(r, i), in float64 -------------- */

/* Blocks of 32 columns x CS row phases over one chunk of rows.  With one
 * chunk the block finishes its columns; with several (tall inputs: a
 * bias gradient over B x T rows) each writes a partial sum and
 * colsum_finish adds the chunks in order.  The chunks depend on the shape
 * only, so the bits do not change from run to run. */
const int CS = 8;
const int COL_CHUNKS = 64;    /* at most */
const int COL_CHUNK_MIN = 64; /* rows */

template <class F>
__global__ void colsum_kernel(F f, int rows, size_t n, int chunk, double *part)
{
    __shared__ double sh[CS][33];
    size_t i = (size_t)blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * chunk, r1 = rows - r0 < chunk ? rows : r0 + chunk;
    double s = 0;
    if (i < n)
        for (int r = r0 + threadIdx.y; r < r1; r += CS)
            s += f.term(r, i);
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && i < n) {
        double t = 0;
        for (int k = 0; k < CS; k++)
            t += sh[k][threadIdx.x];
        if (gridDim.y == 1)
            f.write(i, t);
        else
            part[blockIdx.y * n + i] = t;
    }
}

template <class F> __global__ void colsum_finish(F f, size_t n, const double *part, int nparts)
{
    GRID_STRIDE(i, n)
    {
        double t = 0;
        for (int k = 0; k < nparts; k++)
            t += part[k * n + i];
        f.write(i, t);
    }
}

template <class F> void colsum(cuda_ctx *c, F f, int rows, size_t n, const char *op)
{
    if (n == 0 || rows < 0)
        return;
    size_t nb = (n + 31) / 32;
    if (nb > 0x7fffffffu) {
        record(c, "cuda: %s(rows=%d, n=%zu): too many columns", op, rows, n);
        return;
    }
    int nparts = rows / COL_CHUNK_MIN;
    nparts = nparts < 1 ? 1 : nparts > COL_CHUNKS ? COL_CHUNKS : nparts;
    int chunk = rows > 0 ? (rows + nparts - 1) / nparts : 1;
    double *part = NULL;
    if (nparts > 1 && !(part = (double *)scratch(c, WS_COL, nparts * n * sizeof(double), op)))
        return;
    colsum_kernel<<<dim3((unsigned)nb, nparts), dim3(32, CS), 0, c->stream>>>(f, rows, n, chunk,
                                                                             part);
    launched(c, "%s(rows=%d, n=%zu)", op, rows, n);
    if (nparts > 1) {
        colsum_finish<<<grid_for(n), NT, 0, c->stream>>>(f, n, part, nparts);
        launched(c, "%s(rows=%d, n=%zu): finish", op, rows, n);
    }
}

/* ---- the op files ------------------------------------------------------------------ */

/* seg_ops.cu: the segmentation ops of ops.h into the table */
void fill_seg_ops(gd_backend *be);
/* dmlp_ops.cu: the deformable-MLP ops of ops.h into the table */
void fill_dmlp_ops(gd_backend *be);

} // namespace gdcu

#endif
