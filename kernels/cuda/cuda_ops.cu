/* cuda_ops.cu: the CUDA backend of ops.h.
 *
 * First version, written for correctness: every op reproduces the CPU
 * reference (kernels/cpu/cpu_ops.c) operation for operation, with the same
 * float64 accumulations, and is checked against it by tests/gpu.  Kernels
 * are the plain kind: one thread per output element, one block per row
 * with a float64 shared-memory reduction, or column sums over chunks of
 * rows added in a fixed order.  GEMMs go through cuBLAS (fp32, tf32 or bf16 operands with
 * fp32 accumulation); everything else stays in fp32 whatever the precision.
 *
 * All work is queued on one stream of the backend.  Compute ops return
 * nothing (ops.h), so the first failure of a launch, a cuBLAS call or a
 * workspace allocation is recorded in the context, naming the op and its
 * shapes; sync, upload and download report it, and it stays reported:
 * after a failed op the state on the device is not trustworthy.
 *
 * A backend is used by one thread at a time (which thread may change:
 * each entry point makes its device current). */
#include "device.h"
#include "cuda_internal.h"

#include "adam.h"
#include "cubic.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace gdcu {

/* ---- errors and scratch (declared in cuda_internal.h) ---------------------- */

__attribute__((format(printf, 2, 3))) void record(cuda_ctx *c, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->first, sizeof c->first, fmt, ap);
    va_end(ap);
}

/* Records "cuda: <op and shapes>: <reason>"; the op part is formatted
 * only on failure (ops run thousands of times a step). */
void record_failure(cuda_ctx *c, const char *reason, const char *fmt, va_list ap)
{
    char w[256];
    vsnprintf(w, sizeof w, fmt, ap);
    record(c, "cuda: %s: %s", w, reason);
}

/* false (and recorded) on failure */
__attribute__((format(printf, 3, 4))) bool cuda_ok(cuda_ctx *c, cudaError_t e, const char *fmt,
                                                   ...)
{
    if (e == cudaSuccess)
        return true;
    va_list ap;
    va_start(ap, fmt);
    record_failure(c, cudaGetErrorString(e), fmt, ap);
    va_end(ap);
    return false;
}

cuda_ctx *enter(gd_backend *be)
{
    cuda_ctx *c = (cuda_ctx *)be->ctx;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != c->device)
        cuda_ok(c, cudaSetDevice(c->device), "cudaSetDevice");
    return c;
}

/* Reports the recorded error (and any CUDA error of the queued work). */
int report(cuda_ctx *c, gd_err *err)
{
    cuda_ok(c, cudaStreamSynchronize(c->stream), "sync");
    if (c->failed)
        return gd_errf(err, "%s", c->first);
    return 0;
}

/* A scratch buffer of at least `bytes`; NULL (recorded) on failure.
 * Growing waits for queued work, which may still read the old one. */
void *scratch(cuda_ctx *c, ws_slot s, size_t bytes, const char *op)
{
    if (bytes <= c->ws_bytes[s] && c->ws[s])
        return c->ws[s];
    if (!cuda_ok(c, cudaStreamSynchronize(c->stream), "%s", op))
        return NULL;
    if (c->ws[s] && !cuda_ok(c, cudaFree(c->ws[s]), "%s", op))
        return NULL;
    c->ws[s] = NULL;
    c->ws_bytes[s] = 0;
    size_t want = bytes + bytes / 2 + 256;
    if (cudaMalloc(&c->ws[s], want) != cudaSuccess) {
        cudaGetLastError();
        c->ws[s] = NULL;
        record(c, "cuda: %s: no device memory for %zu bytes of scratch", op, want);
        return NULL;
    }
    c->ws_bytes[s] = want;
    return c->ws[s];
}

} // namespace gdcu

using namespace gdcu;

namespace {

__attribute__((format(printf, 3, 4))) bool blas_ok(cuda_ctx *c, cublasStatus_t s, const char *fmt,
                                                   ...)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return true;
    char reason[128];
    snprintf(reason, sizeof reason, "cuBLAS: %s", cublasGetStatusString(s));
    va_list ap;
    va_start(ap, fmt);
    record_failure(c, reason, fmt, ap);
    va_end(ap);
    return false;
}

/* ---- memory ---------------------------------------------------------------------- */

float *cu_alloc(gd_backend *be, size_t n, gd_err *err)
{
    cuda_ctx *c = enter(be);
    float *p = NULL;
    size_t bytes = (n ? n : 1) * sizeof(float);
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        gd_errf(err, "cuda: out of device memory allocating %zu floats: %s", n,
                cudaGetErrorString(e));
        return NULL;
    }
    e = cudaMemsetAsync(p, 0, bytes, c->stream);
    if (e != cudaSuccess) {
        gd_errf(err, "cuda: alloc: clearing %zu floats: %s", n, cudaGetErrorString(e));
        cudaFree(p);
        return NULL;
    }
    return p;
}

void cu_release(gd_backend *be, float *p)
{
    if (!p)
        return;
    cuda_ctx *c = enter(be);
    /* queued work may still use it */
    if (cuda_ok(c, cudaStreamSynchronize(c->stream), "release"))
        cuda_ok(c, cudaFree(p), "release: cudaFree");
}

float *cu_host_alloc(gd_backend *be, size_t n, gd_err *err)
{
    enter(be); /* the backend's device current */
    float *p = NULL;
    size_t bytes = (n ? n : 1) * sizeof(float);
    cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        gd_errf(err, "cuda: no page-locked host memory for %zu floats: %s", n,
                cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

void cu_host_free(gd_backend *be, float *p)
{
    if (!p)
        return;
    cuda_ctx *c = enter(be);
    /* a queued upload may still read it */
    if (cuda_ok(c, cudaStreamSynchronize(c->stream), "host_free"))
        cuda_ok(c, cudaFreeHost(p), "host_free: cudaFreeHost");
}

int transfer(gd_backend *be, void *dst, const void *src, size_t n, cudaMemcpyKind kind,
             const char *op, gd_err *err)
{
    cuda_ctx *c = enter(be);
    if (n)
        cuda_ok(c, cudaMemcpyAsync(dst, src, n * sizeof(float), kind, c->stream), "%s of %zu floats",
                op, n);
    return report(c, err);
}

int cu_upload(gd_backend *be, float *dst, const float *host, size_t n, gd_err *err)
{
    return transfer(be, dst, host, n, cudaMemcpyHostToDevice, "upload", err);
}

int cu_download(gd_backend *be, float *host, const float *src, size_t n, gd_err *err)
{
    return transfer(be, host, src, n, cudaMemcpyDeviceToHost, "download", err);
}

int cu_sync(gd_backend *be, gd_err *err) { return report(enter(be), err); }

__global__ void fill_kernel(float *x, float v, size_t n)
{
    GRID_STRIDE(i, n) x[i] = v;
}

void cu_fill(gd_backend *be, float *x, float v, size_t n)
{
    launch_n(enter(be), n, "fill", fill_kernel, x, v, n);
}

/* memmove semantics: overlapping ranges go through scratch */
void cu_copy(gd_backend *be, float *dst, const float *src, size_t n)
{
    cuda_ctx *c = enter(be);
    if (!n || dst == src)
        return;
    size_t bytes = n * sizeof(float);
    bool overlap = dst < src + n && src < dst + n;
    if (!overlap) {
        cuda_ok(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream),
                "copy(n=%zu)", n);
        return;
    }
    void *tmp = scratch(c, WS_TMP, bytes, "copy");
    if (tmp && cuda_ok(c, cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, c->stream),
                       "copy(n=%zu)", n))
        cuda_ok(c, cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, c->stream),
                "copy(n=%zu)", n);
}

__global__ void copy_rows_kernel(float *dst, size_t ds, const float *src, size_t ss, int rows,
                                 size_t n)
{
    GRID_STRIDE(k, (size_t)rows * n)
    {
        size_t r = k / n, i = k % n;
        dst[r * ds + i] = src[r * ss + i];
    }
}

void cu_copy_rows(gd_backend *be, float *dst, size_t ds, const float *src, size_t ss, int rows,
                  size_t n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || !n)
        return;
    copy_rows_kernel<<<grid_for((size_t)rows * n), NT, 0, c->stream>>>(dst, ds, src, ss, rows, n);
    launched(c, "copy_rows(rows=%d, n=%zu, ds=%zu, ss=%zu)", rows, n, ds, ss);
}

/* ---- elementwise ------------------------------------------------------------------- */

__global__ void add_kernel(float *y, const float *a, const float *b, size_t n)
{
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

__global__ void scale_kernel(float *x, float alpha, size_t n)
{
    GRID_STRIDE(i, n) x[i] *= alpha;
}

__global__ void scale_rows_kernel(float *y, const float *x, const float *s, int rows, size_t n)
{
    GRID_STRIDE(k, (size_t)rows * n) y[k] = x[k] * s[k / n];
}

void cu_add(gd_backend *be, float *y, const float *a, const float *b, size_t n)
{
    launch_n(enter(be), n, "add", add_kernel, y, a, b, n);
}

void cu_axpy(gd_backend *be, float *y, float alpha, const float *x, size_t n)
{
    launch_n(enter(be), n, "axpy", axpy_kernel, y, alpha, x, n);
}

void cu_scale(gd_backend *be, float *x, float alpha, size_t n)
{
    launch_n(enter(be), n, "scale", scale_kernel, x, alpha, n);
}

/* s_host is host memory: it is copied into scratch on the stream (an
 * asynchronous copy from pageable memory has consumed the host array when
 * it returns, so the caller may reuse it at once). */
void cu_scale_rows(gd_backend *be, float *y, const float *x, const float *s_host, int rows,
                   size_t n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || !n)
        return;
    float *s = (float *)scratch(c, WS_ROWS, (size_t)rows * sizeof(float), "scale_rows");
    if (!s || !cuda_ok(c,
                       cudaMemcpyAsync(s, s_host, (size_t)rows * sizeof(float),
                                       cudaMemcpyHostToDevice, c->stream),
                       "scale_rows: upload of %d scales", rows))
        return;
    scale_rows_kernel<<<grid_for((size_t)rows * n), NT, 0, c->stream>>>(y, x, s, rows, n);
    launched(c, "scale_rows(rows=%d, n=%zu)", rows, n);
}

/* ---- GEMM ---------------------------------------------------------------------------- */

__global__ void to_bf16_kernel(__nv_bfloat16 *y, const float *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] = __float2bfloat16(x[i]);
}

/* Elements a strided batch of row-major matrices spans from its first one:
 * rows x cols with leading dimension ld, `batch` of them `stride` apart. */
size_t span_of(int rows, int cols, int ld, long stride, int batch)
{
    return (size_t)(batch - 1) * (size_t)stride + (size_t)(rows - 1) * (size_t)ld + (size_t)cols;
}

/* A bf16 copy of that span in scratch slot s, at the same offsets. */
const __nv_bfloat16 *bf16_copy(cuda_ctx *c, ws_slot s, const float *x, size_t n)
{
    __nv_bfloat16 *y = (__nv_bfloat16 *)scratch(c, s, n * sizeof(__nv_bfloat16), "gemm: bf16 operand");
    if (!y)
        return NULL;
    to_bf16_kernel<<<grid_for(n), NT, 0, c->stream>>>(y, x, n);
    launched(c, "gemm: bf16 copy of %zu floats", n);
    return y;
}

/* Row-major GEMM through column-major cuBLAS.  A row-major matrix with
 * leading dimension ld, read column-major with the same ld, is its
 * transpose.  So row-major C = op(A) op(B) is column-major
 * C^T = op(B)^T op(A)^T: cuBLAS gets B first (transposed iff tb) and A
 * second (transposed iff ta), m = N and n = M, and the same k, lda, ldb,
 * ldc and strides.  The leading-dimension rules agree: row-major A with
 * ta false is M x K with lda >= K, i.e. column-major K x M, the
 * second operand untransposed, which needs lda >= k = K.  beta = 0 never
 * reads C (cuBLAS, like BLAS), so C may hold anything then.
 *
 * A and B are float, or bf16 copies (bf16 true); C is float; the sum is
 * fp32 (pedantic in the fp32 backend, tf32 products in the tf32 one). */
void gemm_core(cuda_ctx *c, bool ta, bool tb, int M, int N, int K, float alpha, const void *A,
               int lda, long sa, const void *B, int ldb, long sb, float beta, float *C, int ldc,
               long sc, int batch, bool bf16)
{
    cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType t = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = c->prec == P_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasStatus_t st = cublasGemmStridedBatchedEx(c->blas, opB, opA, N, M, K, &alpha, B, t, ldb,
                                                   sb, A, t, lda, sa, &beta, C, CUDA_R_32F, ldc,
                                                   sc, batch, ct, CUBLAS_GEMM_DEFAULT);
    blas_ok(c, st, "gemm(ta=%d, tb=%d, M=%d, N=%d, K=%d, lda=%d, ldb=%d, ldc=%d, batch=%d%s)", ta,
            tb, M, N, K, lda, ldb, ldc, batch, bf16 ? ", bf16" : "");
}

void cu_gemm(gd_backend *be, bool ta, bool tb, int M, int N, int K, float alpha, const float *A,
             int lda, long sa, const float *B, int ldb, long sb, float beta, float *C, int ldc,
             long sc, int batch)
{
    cuda_ctx *c = enter(be);
    if (M <= 0 || N <= 0 || batch <= 0)
        return;
    if (K < 0 || sa < 0 || sb < 0 || sc < 0) {
        record(c, "cuda: gemm(ta=%d, tb=%d, M=%d, N=%d, K=%d, batch=%d): negative size or stride",
               ta, tb, M, N, K, batch);
        return;
    }
    if (c->prec != P_BF16 || K == 0) { /* K = 0: C = beta C, nothing to convert */
        gemm_core(c, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch,
                  false);
        return;
    }
    /* stored shapes: A is (ta ? K x M : M x K), B is (tb ? N x K : K x N) */
    size_t na = ta ? span_of(K, M, lda, sa, batch) : span_of(M, K, lda, sa, batch);
    size_t nb = tb ? span_of(N, K, ldb, sb, batch) : span_of(K, N, ldb, sb, batch);
    const __nv_bfloat16 *a16 = bf16_copy(c, WS_A, A, na);
    const __nv_bfloat16 *b16 = a16 ? bf16_copy(c, WS_B, B, nb) : NULL;
    if (b16)
        gemm_core(c, ta, tb, M, N, K, alpha, a16, lda, sa, b16, ldb, sb, beta, C, ldc, sc, batch,
                  true);
}

__global__ void bias_add_kernel(float *y, const float *bias, int rows, int n)
{
    GRID_STRIDE(k, (size_t)rows * n) y[k] += bias[k % (size_t)n];
}

void cu_bias_add(gd_backend *be, float *y, const float *bias, int rows, int n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    bias_add_kernel<<<grid_for((size_t)rows * n), NT, 0, c->stream>>>(y, bias, rows, n);
    launched(c, "bias_add(rows=%d, n=%d)", rows, n);
}

struct bias_grad_f {
    float *dbias;
    const float *dy;
    size_t n;
    __device__ double term(int r, size_t i) const { return dy[(size_t)r * n + i]; }
    __device__ void write(size_t i, double s) const { dbias[i] += (float)s; }
};

void cu_bias_grad(gd_backend *be, float *dbias, const float *dy, int rows, int n)
{
    cuda_ctx *c = enter(be);
    if (n <= 0)
        return;
    colsum(c, bias_grad_f{dbias, dy, (size_t)n}, rows, (size_t)n,
           "bias_grad");
}

/* ---- activations and normalisation -------------------------------------------------- */

__global__ void gelu_fwd_kernel(float *y, const float *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

__global__ void gelu_bwd_kernel(float *dx, const float *x, const float *dy, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
    GRID_STRIDE(i, n)
    {
        float cdf = 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] = dy[i] * (cdf + x[i] * pdf);
    }
}

void cu_gelu_fwd(gd_backend *be, float *y, const float *x, size_t n)
{
    launch_n(enter(be), n, "gelu_fwd", gelu_fwd_kernel, y, x, n);
}

void cu_gelu_bwd(gd_backend *be, float *dx, const float *x, const float *dy, size_t n)
{
    launch_n(enter(be), n, "gelu_bwd", gelu_bwd_kernel, dx, x, dy, n);
}

/* one block per row, as every row kernel below */
__global__ void layernorm_fwd_kernel(float *y, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int n, float eps)
{
    size_t r = blockIdx.x;
    const float *xr = x + r * n;
    double s = 0, ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += xr[i];
    double mu = block_sum(s) / n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += (xr[i] - mu) * (xr[i] - mu);
    double rs = 1.0 / sqrt(block_sum(ss) / n + eps);
    float *yr = y + r * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = (float)((xr[i] - mu) * rs) * w[i] + b[i];
    if (threadIdx.x == 0) {
        mean[r] = (float)mu;
        rstd[r] = (float)rs;
    }
}

void cu_layernorm_fwd(gd_backend *be, float *y, float *mean, float *rstd, const float *x,
                      const float *w, const float *b, int rows, int n, float eps)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    layernorm_fwd_kernel<<<rows, NT, 0, c->stream>>>(y, mean, rstd, x, w, b, n, eps);
    launched(c, "layernorm_fwd(rows=%d, n=%d)", rows, n);
}

/* dx += rstd (dxh - mean(dxh) - xh mean(dxh xh)), dxh = dy w */
__global__ void layernorm_bwd_dx_kernel(float *dx, const float *dy, const float *x,
                                        const float *w, const float *mean, const float *rstd,
                                        int n)
{
    size_t r = blockIdx.x;
    const float *xr = x + r * n, *dyr = dy + r * n;
    double a = 0, bs = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double xh = (xr[i] - mean[r]) * (double)rstd[r];
        double g = (double)dyr[i] * w[i];
        a += g;
        bs += g * xh;
    }
    a = block_sum(a) / n;
    bs = block_sum(bs) / n;
    float *dxr = dx + r * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double xh = (xr[i] - mean[r]) * (double)rstd[r];
        double g = (double)dyr[i] * w[i];
        dxr[i] += (float)(rstd[r] * (g - a - xh * bs));
    }
}

/* dw += sum_r dy xh (which = 0), db += sum_r dy (which = 1) */
struct layernorm_wgrad_f {
    float *out;
    const float *dy, *x, *mean, *rstd;
    size_t n;
    int which;
    __device__ double term(int r, size_t i) const
    {
        size_t k = (size_t)r * n + i;
        if (which)
            return dy[k];
        double xh = (x[k] - mean[r]) * (double)rstd[r];
        return dy[k] * xh;
    }
    __device__ void write(size_t i, double s) const { out[i] += (float)s; }
};

void cu_layernorm_bwd(gd_backend *be, float *dx, float *dw, float *db, const float *dy,
                      const float *x, const float *w, const float *mean, const float *rstd,
                      int rows, int n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    layernorm_bwd_dx_kernel<<<rows, NT, 0, c->stream>>>(dx, dy, x, w, mean, rstd, n);
    launched(c, "layernorm_bwd(rows=%d, n=%d)", rows, n);
    colsum(c, layernorm_wgrad_f{dw, dy, x, mean, rstd, (size_t)n, 0}, rows, (size_t)n,
           "layernorm_bwd: dw");
    colsum(c, layernorm_wgrad_f{db, dy, x, mean, rstd, (size_t)n, 1}, rows, (size_t)n,
           "layernorm_bwd: db");
}

__device__ double row_norm(const float *x, int n)
{
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += (double)x[i] * x[i];
    return sqrt(block_sum(ss));
}

__global__ void l2norm_fwd_kernel(float *y, float *norms, const float *x, int n, float eps)
{
    size_t r = blockIdx.x;
    const float *xr = x + r * n;
    double nrm = row_norm(xr, n);
    double d = nrm > eps ? nrm : eps;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[r * n + i] = (float)(xr[i] / d);
    if (threadIdx.x == 0)
        norms[r] = (float)nrm;
}

/* above eps: dx = (dy - y (y . dy)) / ||x||; below it the map is x / eps */
__global__ void l2norm_bwd_kernel(float *dx, const float *dy, const float *y, const float *norms,
                                  int n, float eps)
{
    size_t r = blockIdx.x;
    const float *yr = y + r * n, *dyr = dy + r * n;
    float *dxr = dx + r * n;
    if (norms[r] <= eps) { /* the whole block takes this branch */
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            dxr[i] = dyr[i] / eps;
        return;
    }
    double dot = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dot += (double)yr[i] * dyr[i];
    dot = block_sum(dot);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dxr[i] = (float)((dyr[i] - yr[i] * dot) / norms[r]);
}

void cu_l2norm_fwd(gd_backend *be, float *y, float *norms, const float *x, int rows, int n,
                   float eps)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    l2norm_fwd_kernel<<<rows, NT, 0, c->stream>>>(y, norms, x, n, eps);
    launched(c, "l2norm_fwd(rows=%d, n=%d)", rows, n);
}

void cu_l2norm_bwd(gd_backend *be, float *dx, const float *dy, const float *y, const float *norms,
                   int rows, int n, float eps)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    l2norm_bwd_kernel<<<rows, NT, 0, c->stream>>>(dx, dy, y, norms, n, eps);
    launched(c, "l2norm_bwd(rows=%d, n=%d)", rows, n);
}

__global__ void weightnorm_fwd_kernel(float *w, float *norms, const float *g, const float *v,
                                      int n)
{
    size_t r = blockIdx.x;
    const float *vr = v + r * n;
    double nrm = row_norm(vr, n);
    float scale = (float)(g[r] / nrm);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        w[r * n + i] = scale * vr[i];
    if (threadIdx.x == 0)
        norms[r] = (float)nrm;
}

/* with u = v / ||v||: dg += dw . u; dv += (g / ||v||) (dw - u (dw . u)) */
__global__ void weightnorm_bwd_kernel(float *dg, float *dv, const float *dw, const float *g,
                                      const float *v, const float *norms, int n)
{
    size_t r = blockIdx.x;
    const float *vr = v + r * n, *dwr = dw + r * n;
    double nrm = norms[r], dot = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dot += (double)dwr[i] * vr[i];
    dot = block_sum(dot) / nrm;
    if (dg && threadIdx.x == 0)
        dg[r] += (float)dot;
    float a = (float)(g[r] / nrm), b = (float)(dot / nrm);
    float *dvr = dv + r * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dvr[i] += a * (dwr[i] - vr[i] * b);
}

void cu_weightnorm_fwd(gd_backend *be, float *w, float *norms, const float *g, const float *v,
                       int rows, int n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    weightnorm_fwd_kernel<<<rows, NT, 0, c->stream>>>(w, norms, g, v, n);
    launched(c, "weightnorm_fwd(rows=%d, n=%d)", rows, n);
}

void cu_weightnorm_bwd(gd_backend *be, float *dg, float *dv, const float *dw, const float *g,
                       const float *v, const float *norms, int rows, int n)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || n <= 0)
        return;
    weightnorm_bwd_kernel<<<rows, NT, 0, c->stream>>>(dg, dv, dw, g, v, norms, n);
    launched(c, "weightnorm_bwd(rows=%d, n=%d)", rows, n);
}

/* y = softmax(x inv_temp) per row, in float64 like the CPU's softmax_row;
 * y may be x (each thread rewrites only what it reads last). */
__global__ void softmax_kernel(float *y, const float *x, double inv_temp, int n)
{
    size_t r = blockIdx.x;
    const float *xr = x + r * n;
    double mx = -INFINITY, s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        mx = fmax(mx, xr[i] * inv_temp);
    mx = block_max(mx);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += exp(xr[i] * inv_temp - mx);
    s = block_sum(s);
    float *yr = y + r * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = (float)(exp(xr[i] * inv_temp - mx) / s);
}

void softmax_rows(cuda_ctx *c, float *y, const float *x, double inv_temp, size_t rows, int n,
                  const char *op)
{
    if (!rows || n <= 0)
        return;
    if (rows > 0x7fffffffu) {
        record(c, "cuda: %s(rows=%zu, n=%d): too many rows", op, rows, n);
        return;
    }
    softmax_kernel<<<(unsigned)rows, NT, 0, c->stream>>>(y, x, inv_temp, n);
    launched(c, "%s(rows=%zu, n=%d)", op, rows, n);
}

void cu_softmax_fwd(gd_backend *be, float *y, const float *x, float inv_temp, int rows, int n)
{
    cuda_ctx *c = enter(be);
    softmax_rows(c, y, x, inv_temp, rows > 0 ? (size_t)rows : 0, n,
                 "softmax_fwd");
}

/* ---- ViT pieces -------------------------------------------------------------------- */

__global__ void patchify_kernel(float *out, const float *img, int B, int C, int H, int W, int p)
{
    int gh = H / p, gw = W / p;
    size_t cols = (size_t)C * p * p, total = (size_t)B * gh * gw * cols;
    GRID_STRIDE(k, total)
    {
        size_t col = k % cols, pi = k / cols;
        int px = (int)(pi % gw), py = (int)(pi / gw % gh), b = (int)(pi / ((size_t)gw * gh));
        int ch = (int)(col / ((size_t)p * p)), ky = (int)(col / p % p), kx = (int)(col % p);
        out[k] = img[(((size_t)b * C + ch) * H + (size_t)py * p + ky) * W + (size_t)px * p + kx];
    }
}

void cu_patchify(gd_backend *be, float *out, const float *img, int B, int C, int H, int W, int p)
{
    cuda_ctx *c = enter(be);
    if (B <= 0 || C <= 0 || p <= 0 || H < p || W < p)
        return;
    size_t total = (size_t)B * (H / p) * (W / p) * C * p * p;
    patchify_kernel<<<grid_for(total), NT, 0, c->stream>>>(out, img, B, C, H, W, p);
    launched(c, "patchify(B=%d, C=%d, H=%d, W=%d, p=%d)", B, C, H, W, p);
}

__global__ void tokens_fwd_kernel(float *x, const float *patches, const float *cls,
                                  const float *pos, int B, int np, int D)
{
    size_t T = (size_t)np + 1;
    GRID_STRIDE(k, (size_t)B * T * D)
    {
        size_t d = k % D, t = k / D % T, b = k / (T * D);
        x[k] = t == 0 ? cls[d] + pos[d] : patches[(b * np + t - 1) * D + d] + pos[t * D + d];
    }
}

__global__ void tokens_dpatches_kernel(float *dpatches, const float *dx, int B, int np, int D)
{
    size_t T = (size_t)np + 1;
    GRID_STRIDE(k, (size_t)B * np * D)
    {
        size_t d = k % D, t = k / D % np, b = k / ((size_t)np * D);
        dpatches[k] = dx[(b * T + 1 + t) * D + d];
    }
}

/* dpos[j] += sum_b dx[b, j]; the CLS row also into dcls */
struct tokens_grad_f {
    float *dcls, *dpos;
    const float *dx;
    size_t TD;
    int D;
    __device__ double term(int b, size_t j) const { return dx[(size_t)b * TD + j]; }
    __device__ void write(size_t j, double s) const
    {
        dpos[j] += (float)s;
        if (j < (size_t)D)
            dcls[j] += (float)s;
    }
};

void cu_tokens_fwd(gd_backend *be, float *x, const float *patches, const float *cls,
                   const float *pos, int B, int np, int D)
{
    cuda_ctx *c = enter(be);
    if (B <= 0 || np < 0 || D <= 0)
        return;
    size_t total = (size_t)B * (np + 1) * D;
    tokens_fwd_kernel<<<grid_for(total), NT, 0, c->stream>>>(x, patches, cls, pos, B, np, D);
    launched(c, "tokens_fwd(B=%d, np=%d, D=%d)", B, np, D);
}

void cu_tokens_bwd(gd_backend *be, float *dpatches, float *dcls, float *dpos, const float *dx,
                   int B, int np, int D)
{
    cuda_ctx *c = enter(be);
    if (B <= 0 || np < 0 || D <= 0)
        return;
    size_t TD = (size_t)(np + 1) * D;
    if (dpatches && np > 0) {
        size_t total = (size_t)B * np * D;
        tokens_dpatches_kernel<<<grid_for(total), NT, 0, c->stream>>>(dpatches, dx, B, np, D);
        launched(c, "tokens_bwd(B=%d, np=%d, D=%d)", B, np, D);
    }
    colsum(c, tokens_grad_f{dcls, dpos, dx, TD, D}, B, TD, "tokens_bwd: dpos");
}

__global__ void posinterp_fwd_kernel(float *out, const float *pos, int g, int oh, int ow,
                                     double sh, double sw, int D)
{
    const float *grid = pos + D;
    GRID_STRIDE(k, (size_t)oh * ow * D)
    {
        int d = (int)(k % D), x = (int)(k / D % ow), y = (int)(k / ((size_t)D * ow));
        int iy[4], ix[4];
        double wy[4], wx[4];
        gd_cubic_taps(y, sh, g, iy, wy);
        gd_cubic_taps(x, sw, g, ix, wx);
        out[(1 + (size_t)y * ow + x) * D + d] = gd_cubic_gather(grid, g, D, d, iy, wy, ix, wx);
    }
}

/* The adjoint, scattered as the CPU does it: one thread per channel d
 * owns every dpos[., d], so there is no race, and it adds in the CPU's
 * order. */
__global__ void posinterp_bwd_kernel(float *dpos, const float *dout, int g, int oh, int ow,
                                     double sh, double sw, int D)
{
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D)
        return;
    dpos[d] += dout[d];
    gd_cubic_scatter(dpos + D, dout, g, oh, ow, sh, sw, D, d);
}

void cu_posinterp_fwd(gd_backend *be, float *out, const float *pos, int g, int oh, int ow,
                      double sh, double sw, int D)
{
    cuda_ctx *c = enter(be);
    if (D <= 0 || g <= 0)
        return;
#define PI_SHAPE "posinterp_fwd(g=%d, oh=%d, ow=%d, D=%d)", g, oh, ow, D
    if (!cuda_ok(c,
                 cudaMemcpyAsync(out, pos, (size_t)D * sizeof(float), cudaMemcpyDeviceToDevice,
                                 c->stream),
                 PI_SHAPE) ||
        oh <= 0 || ow <= 0)
        return;
    posinterp_fwd_kernel<<<grid_for((size_t)oh * ow * D), NT, 0, c->stream>>>(out, pos, g, oh, ow,
                                                                              sh, sw, D);
    launched(c, PI_SHAPE);
#undef PI_SHAPE
}

void cu_posinterp_bwd(gd_backend *be, float *dpos, const float *dout, int g, int oh, int ow,
                      double sh, double sw, int D)
{
    cuda_ctx *c = enter(be);
    if (D <= 0 || g <= 0)
        return;
    posinterp_bwd_kernel<<<(D + 63) / 64, 64, 0, c->stream>>>(dpos, dout, g, oh < 0 ? 0 : oh,
                                                             ow < 0 ? 0 : ow, sh, sw, D);
    launched(c, "posinterp_bwd(g=%d, oh=%d, ow=%d, D=%d)", g, oh, ow, D);
}

/* The GEMM operands of attention: in bf16 one converted copy of the whole
 * tensor (scratch slot s), else the float tensor itself; `at` offsets
 * into either.  NULL (recorded) when the copy fails. */
struct operand {
    const void *p;
    bool bf16;
    const void *at(size_t off) const
    {
        return (const char *)p + off * (bf16 ? sizeof(__nv_bfloat16) : sizeof(float));
    }
};

operand gemm_operand(cuda_ctx *c, ws_slot s, const float *x, size_t n)
{
    if (c->prec != P_BF16)
        return operand{x, false};
    return operand{bf16_copy(c, s, x, n), true};
}

/* Attention as the CPU computes it, with one batched GEMM per head and
 * product: head h of sample b starts at b T 3D + h hd in qkv (rows 3D
 * apart), so for a fixed head the samples are T 3D apart; its [T, T] block
 * of att is at (b H + h) T T, so the samples are H T T apart.  The softmax
 * of all rows in one launch. */
void cu_attention_fwd(gd_backend *be, float *out, float *att, const float *qkv, int B, int T,
                      int H, int hd)
{
    cuda_ctx *c = enter(be);
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0)
        return;
    int D = H * hd, ld = 3 * D;
    long TT = (long)T * T, sq = (long)T * ld;
    float scale = 1.0f / sqrtf((float)hd);
    operand q = gemm_operand(c, WS_QKV, qkv, (size_t)B * sq);
    if (!q.p)
        return;
    for (int h = 0; h < H; h++) /* S = scale q k^T */
        gemm_core(c, false, true, T, T, hd, scale, q.at(h * hd), ld, sq, q.at(D + h * hd), ld, sq,
                  0.0f, att + h * TT, T, H * TT, B, q.bf16);
    softmax_rows(c, att, att, 1.0, (size_t)B * H * T, T, "attention_fwd: softmax");
    operand P = gemm_operand(c, WS_ATT, att, (size_t)B * H * TT);
    if (!P.p)
        return;
    for (int h = 0; h < H; h++) /* out = P v */
        gemm_core(c, false, false, T, hd, T, 1.0f, P.at(h * TT), T, H * TT, q.at(2 * D + h * hd),
                  ld, sq, 0.0f, out + h * hd, D, (long)T * D, B, P.bf16);
}

/* the softmax adjoint in place: dS = P (dP - rowdot(P, dP)) */
__global__ void softmax_bwd_kernel(float *dS, const float *P, int n)
{
    size_t r = blockIdx.x;
    const float *pr = P + r * n;
    float *sr = dS + r * n;
    double dot = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        dot += (double)pr[i] * sr[i];
    dot = block_sum(dot);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        sr[i] = (float)(pr[i] * (sr[i] - dot));
}

void cu_attention_bwd(gd_backend *be, float *dqkv, float *scratch_att, const float *dout,
                      const float *qkv, const float *att, int B, int T, int H, int hd)
{
    cuda_ctx *c = enter(be);
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0)
        return;
    int D = H * hd, ld = 3 * D;
    long TT = (long)T * T, sq = (long)T * ld, so = (long)T * D;
    float scale = 1.0f / sqrtf((float)hd);
    size_t rows = (size_t)B * H * T;
    if (rows > 0x7fffffffu) {
        record(c, "cuda: attention_bwd(B=%d, T=%d, H=%d): too many rows", B, T, H);
        return;
    }
    operand q = gemm_operand(c, WS_QKV, qkv, (size_t)B * sq);
    operand dO = q.p ? gemm_operand(c, WS_DOUT, dout, (size_t)B * so) : operand{NULL, false};
    operand P = dO.p ? gemm_operand(c, WS_ATT, att, (size_t)B * H * TT) : operand{NULL, false};
    if (!P.p)
        return;
    for (int h = 0; h < H; h++) /* dP = dO v^T */
        gemm_core(c, false, true, T, T, hd, 1.0f, dO.at(h * hd), D, so, q.at(2 * D + h * hd), ld,
                  sq, 0.0f, scratch_att + h * TT, T, H * TT, B, q.bf16);
    softmax_bwd_kernel<<<(unsigned)rows, NT, 0, c->stream>>>(scratch_att, att, T);
    launched(c, "attention_bwd(B=%d, T=%d, H=%d, hd=%d)", B, T, H, hd);
    operand dS = gemm_operand(c, WS_DATT, scratch_att, (size_t)B * H * TT);
    if (!dS.p)
        return;
    for (int h = 0; h < H; h++) {
        /* dv = P^T dO, dq = scale dS k, dk = scale dS^T q */
        gemm_core(c, true, false, T, hd, T, 1.0f, P.at(h * TT), T, H * TT, dO.at(h * hd), D, so,
                  0.0f, dqkv + 2 * D + h * hd, ld, sq, B, q.bf16);
        gemm_core(c, false, false, T, hd, T, scale, dS.at(h * TT), T, H * TT, q.at(D + h * hd), ld,
                  sq, 0.0f, dqkv + h * hd, ld, sq, B, q.bf16);
        gemm_core(c, true, false, T, hd, T, scale, dS.at(h * TT), T, H * TT, q.at(h * hd), ld, sq,
                  0.0f, dqkv + D + h * hd, ld, sq, B, q.bf16);
    }
}

/* ---- DINO loss ------------------------------------------------------------------------ */

__global__ void teacher_probs_kernel(float *q, const float *t, const float *center, float temp,
                                     int K)
{
    size_t r = blockIdx.x;
    const float *tr = t + r * K;
    float *qr = q + r * K;
    double mx = -INFINITY, s = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        mx = fmax(mx, (double)(tr[k] - center[k]) / temp);
    mx = block_max(mx);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        s += exp((double)(tr[k] - center[k]) / temp - mx);
    s = block_sum(s);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        qr[k] = (float)(exp((double)(tr[k] - center[k]) / temp - mx) / s);
}

void cu_dino_teacher_probs(gd_backend *be, float *q, const float *t, const float *center,
                           float temp, int rows, int K)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || K <= 0)
        return;
    teacher_probs_kernel<<<rows, NT, 0, c->stream>>>(q, t, center, temp, K);
    launched(c, "dino_teacher_probs(rows=%d, K=%d)", rows, K);
}

/* One block per student row (view v, sample b): its log-softmax against
 * every teacher view but its own; the row's share of the loss goes to
 * rowloss[v B + b], summed in order by loss_sum_kernel as the CPU does. */
__global__ void dino_loss_kernel(double *rowloss, float *ds, const float *s, const float *q, int G,
                                 int B, int K, double inv_t, double w)
{
    int v = blockIdx.x / B, b = blockIdx.x % B;
    const float *sr = s + ((size_t)v * B + b) * K;
    double mx = -INFINITY, z = 0;
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        mx = fmax(mx, sr[k] * inv_t);
    mx = block_max(mx);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        z += exp(sr[k] * inv_t - mx);
    double lse = mx + log(block_sum(z));
    double total = 0;
    int nq = 0;
    for (int i = 0; i < G; i++) {
        if (i == v)
            continue;
        nq++;
        const float *qr = q + ((size_t)i * B + b) * K;
        double ce = 0;
        for (int k = threadIdx.x; k < K; k += blockDim.x)
            ce -= qr[k] * (sr[k] * inv_t - lse);
        total += block_sum(ce) * w;
    }
    if (threadIdx.x == 0)
        rowloss[blockIdx.x] = total;
    if (!ds)
        return;
    float *dr = ds + ((size_t)v * B + b) * K;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        double qs = 0;
        for (int i = 0; i < G; i++)
            if (i != v)
                qs += q[((size_t)i * B + b) * K + k];
        double p = exp(sr[k] * inv_t - lse);
        dr[k] = (float)((nq * p - qs) * inv_t * w);
    }
}

__global__ void loss_sum_kernel(float *loss, const double *rowloss, int n)
{
    double total = 0;
    for (int r = 0; r < n; r++)
        total += rowloss[r];
    loss[0] = (float)total;
}

void cu_dino_loss(gd_backend *be, float *loss, float *ds, const float *s, const float *q, int G,
                  int S, int B, int K, float student_temp)
{
    cuda_ctx *c = enter(be);
#define DL_SHAPE "dino_loss(G=%d, S=%d, B=%d, K=%d)", G, S, B, K
    int npairs = 0;
    for (int v = 0; v < S; v++)
        for (int i = 0; i < G; i++)
            npairs += v != i;
    double inv_t = 1.0 / student_temp, wt = 1.0 / ((double)npairs * B);
    int nrows = S * B;
    if (nrows <= 0 || K <= 0) {
        record(c, "cuda: dino_loss(G=%d, S=%d, B=%d, K=%d): empty", G, S, B, K);
        return;
    }
    double *rowloss = (double *)scratch(c, WS_LOSS, (size_t)nrows * sizeof(double), "dino_loss");
    if (!rowloss)
        return;
    dino_loss_kernel<<<nrows, NT, 0, c->stream>>>(rowloss, ds, s, q, G, B, K, inv_t, wt);
    launched(c, DL_SHAPE);
    loss_sum_kernel<<<1, 1, 0, c->stream>>>(loss, rowloss, nrows);
    launched(c, DL_SHAPE);
#undef DL_SHAPE
}

/* center = m center + (1 - m) mean_rows(t) */
struct center_f {
    float *center;
    const float *t;
    size_t K;
    int rows;
    float m;
    __device__ double term(int r, size_t k) const { return t[(size_t)r * K + k]; }
    __device__ void write(size_t k, double s) const
    {
        center[k] = (float)(center[k] * (double)m + s / rows * (1.0 - (double)m));
    }
};

void cu_center_update(gd_backend *be, float *center, const float *t, int rows, int K, float m)
{
    cuda_ctx *c = enter(be);
    if (rows <= 0 || K <= 0)
        return;
    colsum(c, center_f{center, t, (size_t)K, rows, m}, rows, (size_t)K,
           "center_update");
}

/* ---- reductions ------------------------------------------------------------------------ */

/* A fixed-order sum (or sum of squares) in float64: RED_BLOCKS partial sums
 * (as many as the size needs, up to the cap), then those in order by one
 * thread.  The same n gives the same grid, hence the same bits. */
__global__ void partial_sums_kernel(double *part, const float *x, size_t n, int sq)
{
    double s = 0;
    GRID_STRIDE(i, n) s += sq ? (double)x[i] * x[i] : (double)x[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        part[blockIdx.x] = s;
}

/* out64[0] (when not NULL) and out32[0] (when not NULL) get the total */
__global__ void finish_sum_kernel(double *out64, float *out32, const double *part, unsigned np)
{
    double s = 0;
    for (unsigned i = 0; i < np; i++)
        s += part[i];
    if (out64)
        *out64 = s;
    if (out32)
        *out32 = (float)s;
}

void device_sum(cuda_ctx *c, double *out64, float *out32, const float *x, size_t n, int sq,
                const char *op)
{
    double *part = (double *)scratch(c, WS_RED, RED_BLOCKS * sizeof(double), op);
    if (!part)
        return;
    unsigned nb = grid_for(n);
    nb = nb > RED_BLOCKS ? RED_BLOCKS : nb;
    if (n)
        partial_sums_kernel<<<nb, NT, 0, c->stream>>>(part, x, n, sq);
    else
        cuda_ok(c, cudaMemsetAsync(part, 0, sizeof(double), c->stream), "%s(n=0)", op);
    launched(c, "%s(n=%zu)", op, n);
    finish_sum_kernel<<<1, 1, 0, c->stream>>>(out64, out32, part, n ? nb : 1);
    launched(c, "%s(n=%zu)", op, n);
}

void cu_sum(gd_backend *be, float *out, const float *x, size_t n)
{
    cuda_ctx *c = enter(be);
    device_sum(c, NULL, out, x, n, 0, "sum");
}

/* The squared norms go to device scratch, come back in one download, and
 * the scaling factors are computed on the host exactly as the CPU does. */
int cu_clip_per_tensor(gd_backend *be, float *buf, const size_t *off, const size_t *len, int n,
                       float clip, double *norms, gd_err *err)
{
    cuda_ctx *c = enter(be);
    if (n <= 0)
        return report(c, err);
    double *sq = (double *)scratch(c, WS_LOSS, (size_t)n * sizeof(double), "clip_per_tensor");
    if (!sq)
        return report(c, err);
    for (int i = 0; i < n; i++)
        device_sum(c, sq + i, NULL, buf + off[i], len[i], 1, "clip_per_tensor: norm");
    cuda_ok(c,
            cudaMemcpyAsync(norms, sq, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost,
                            c->stream),
            "clip_per_tensor: download of %d norms", n);
    if (report(c, err))
        return -1;
    for (int i = 0; i < n; i++) {
        norms[i] = sqrt(norms[i]);
        double coef = clip / (norms[i] + 1e-6);
        if (clip > 0 && coef < 1)
            cu_scale(be, buf + off[i], (float)coef, len[i]);
    }
    return 0;
}

/* torch.optim.AdamW (single-tensor path), as the CPU's cpu_adamw */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float beta1,
                             float beta2, float eps, gd_adam_consts k)
{
    GRID_STRIDE(i, n)
    {
        float mi = m[i], vi = v[i];
        p[i] = gd_adamw_elem(p[i], g[i], &mi, &vi, beta1, beta2, eps, k);
        m[i] = mi;
        v[i] = vi;
    }
}

void cu_adamw(gd_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
              float wd, float beta1, float beta2, float eps, int step)
{
    cuda_ctx *c = enter(be);
    if (!n)
        return;
    adamw_kernel<<<grid_for(n), NT, 0, c->stream>>>(p, g, m, v, n, beta1, beta2, eps,
                                                    gd_adam_consts_of(lr, wd, beta1, beta2, step));
    launched(c, "adamw(n=%zu, step=%d)", n, step);
}

__global__ void ema_kernel(float *teacher, const float *student, float m, size_t n)
{
    GRID_STRIDE(i, n) teacher[i] = gd_ema_elem(teacher[i], student[i], m);
}

void cu_ema(gd_backend *be, float *teacher, const float *student, float m, size_t n)
{
    launch_n(enter(be), n, "ema", ema_kernel, teacher, student, m, n);
}

/* adamw_ema's table on the device: a tensor's extent and its constants */
struct adam_entry {
    size_t off, end;
    gd_adam_consts k;
};

/* The entry whose tensor holds element i (the table is sorted and
 * disjoint), or -1: a binary search for the first end beyond i. */
__device__ int adam_entry_of(const adam_entry *t, int nt, size_t i)
{
    int lo = 0, hi = nt;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t[mid].end <= i)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nt && t[lo].off <= i ? lo : -1;
}

/* Every element read and written once: AdamW where a listed tensor holds
 * it, then the EMA of the (new) student value into the teacher. */
__global__ void adamw_ema_kernel(float *p, const float *g, float *m, float *v, float *teacher,
                                 size_t n, const adam_entry *t, int nt, float beta1, float beta2,
                                 float eps, float momentum)
{
    GRID_STRIDE(i, n)
    {
        float pi = p[i];
        int j = adam_entry_of(t, nt, i);
        if (j >= 0) {
            float mi = m[i], vi = v[i];
            pi = gd_adamw_elem(pi, g[i], &mi, &vi, beta1, beta2, eps, t[j].k);
            p[i] = pi;
            m[i] = mi;
            v[i] = vi;
        }
        teacher[i] = gd_ema_elem(teacher[i], pi, momentum);
    }
}

/* The table is built on the host and copied into scratch on the stream (an
 * asynchronous copy from pageable memory has consumed the host array when
 * it returns, as in scale_rows). */
void cu_adamw_ema(gd_backend *be, float *p, const float *g, float *m, float *v, float *teacher,
                  size_t n, const gd_adam_tensor *t, int nt, float lr, float beta1, float beta2,
                  float eps, float momentum)
{
    cuda_ctx *c = enter(be);
    if (!n)
        return;
    size_t bytes = (size_t)(nt > 0 ? nt : 0) * sizeof(adam_entry);
    adam_entry *d = NULL;
    if (bytes) {
        adam_entry *h = (adam_entry *)malloc(bytes);
        if (!h) {
            record(c, "adamw_ema: no host memory for %d tensors", nt);
            return;
        }
        for (int j = 0; j < nt; j++)
            h[j] = adam_entry{t[j].off, t[j].off + t[j].n,
                              gd_adam_consts_of(lr, t[j].wd, beta1, beta2, t[j].step)};
        d = (adam_entry *)scratch(c, WS_ADAM, bytes, "adamw_ema");
        bool ok = d && cuda_ok(c, cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, c->stream),
                               "adamw_ema: upload of %d tensors", nt);
        free(h);
        if (!ok)
            return;
    }
    adamw_ema_kernel<<<grid_for(n), NT, 0, c->stream>>>(p, g, m, v, teacher, n, d, nt > 0 ? nt : 0,
                                                        beta1, beta2, eps, momentum);
    launched(c, "adamw_ema(n=%zu, tensors=%d)", n, nt);
}

__global__ void finite_kernel(int *bad, const float *x, size_t n)
{
    GRID_STRIDE(i, n)
    if (!isfinite(x[i]))
        *bad = 1; /* every writer writes the same value */
}

int cu_all_finite(gd_backend *be, const float *x, size_t n, int *finite, gd_err *err)
{
    cuda_ctx *c = enter(be);
    int *bad = (int *)scratch(c, WS_FLAG, sizeof(int), "all_finite"), host = 0;
    if (bad && cuda_ok(c, cudaMemsetAsync(bad, 0, sizeof(int), c->stream), "all_finite") && n) {
        finite_kernel<<<grid_for(n), NT, 0, c->stream>>>(bad, x, n);
        launched(c, "all_finite(n=%zu)", n);
    }
    if (bad)
        cuda_ok(c, cudaMemcpyAsync(&host, bad, sizeof(int), cudaMemcpyDeviceToHost, c->stream),
                "all_finite: download");
    if (report(c, err))
        return -1;
    *finite = !host;
    return 0;
}

void fill_table(gd_backend *be)
{
    be->name = "cuda";
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->host_alloc = cu_host_alloc;
    be->host_free = cu_host_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->sync = cu_sync;
    be->fill = cu_fill;
    be->copy = cu_copy;
    be->copy_rows = cu_copy_rows;
    be->add = cu_add;
    be->axpy = cu_axpy;
    be->scale = cu_scale;
    be->scale_rows = cu_scale_rows;
    be->gemm = cu_gemm;
    be->bias_add = cu_bias_add;
    be->bias_grad = cu_bias_grad;
    be->gelu_fwd = cu_gelu_fwd;
    be->gelu_bwd = cu_gelu_bwd;
    be->layernorm_fwd = cu_layernorm_fwd;
    be->layernorm_bwd = cu_layernorm_bwd;
    be->l2norm_fwd = cu_l2norm_fwd;
    be->l2norm_bwd = cu_l2norm_bwd;
    be->weightnorm_fwd = cu_weightnorm_fwd;
    be->weightnorm_bwd = cu_weightnorm_bwd;
    be->softmax_fwd = cu_softmax_fwd;
    be->patchify = cu_patchify;
    be->tokens_fwd = cu_tokens_fwd;
    be->tokens_bwd = cu_tokens_bwd;
    be->posinterp_fwd = cu_posinterp_fwd;
    be->posinterp_bwd = cu_posinterp_bwd;
    be->attention_fwd = cu_attention_fwd;
    be->attention_bwd = cu_attention_bwd;
    be->dino_teacher_probs = cu_dino_teacher_probs;
    be->dino_loss = cu_dino_loss;
    be->center_update = cu_center_update;
    be->clip_per_tensor = cu_clip_per_tensor;
    be->adamw = cu_adamw;
    be->ema = cu_ema;
    be->adamw_ema = cu_adamw_ema;
    be->sum = cu_sum;
    be->all_finite = cu_all_finite;
    fill_seg_ops(be); /* seg_ops.cu */
    fill_dmlp_ops(be); /* dmlp_ops.cu */
    /* ops added to ops.h later stay NULL (calloc) until written here */
}

int parse_precision(const char *s, prec_kind *p)
{
    if (!strcmp(s, "fp32"))
        *p = P_FP32;
    else if (!strcmp(s, "tf32"))
        *p = P_TF32;
    else if (!strcmp(s, "bf16"))
        *p = P_BF16;
    else
        return -1;
    return 0;
}

} // namespace

extern "C" gd_backend *gd_backend_cuda(int device, const char *precision, gd_err *err)
{
    prec_kind p;
    if (parse_precision(precision ? precision : "", &p))
        return gd_errf(err, "cuda: precision '%s' is not fp32, tf32 or bf16",
                       precision ? precision : ""),
               (gd_backend *)NULL;
    int n = gd_cuda_device_count(err);
    if (n == 0)
        return NULL;
    if (device < 0 || device >= n)
        return gd_errf(err, "cuda: device %d does not exist (%d found)", device, n),
               (gd_backend *)NULL;
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess)
        return gd_errf(err, "cuda: device %d: %s", device, cudaGetErrorString(e)),
               (gd_backend *)NULL;
    if (p != P_FP32 && prop.major < 8)
        return gd_errf(err, "cuda: %s needs compute capability 8.0 or more; %s has %d.%d",
                       precision, prop.name, prop.major, prop.minor),
               (gd_backend *)NULL;
    gd_backend *be = (gd_backend *)calloc(1, sizeof *be);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return gd_errf(err, "cuda: out of memory"), (gd_backend *)NULL;
    }
    c->device = device;
    c->prec = p;
    be->ctx = c;
    fill_table(be);
    const char *step = "cudaSetDevice";
    e = cudaSetDevice(device);
    if (e == cudaSuccess) {
        step = "cudaStreamCreate";
        e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    }
    if (e != cudaSuccess) {
        gd_errf(err, "cuda: device %d: %s: %s", device, step, cudaGetErrorString(e));
        free(c);
        free(be);
        return NULL;
    }
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetStream(c->blas, c->stream);
    /* fp32 must stay fp32: no tensor-core shortcut behind our back */
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetMathMode(c->blas, p == P_FP32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS) {
        gd_errf(err, "cuda: device %d: cuBLAS: %s", device, cublasGetStatusString(s));
        if (c->blas)
            cublasDestroy(c->blas);
        cudaStreamDestroy(c->stream);
        free(c);
        free(be);
        return NULL;
    }
    return be;
}

extern "C" void gd_backend_cuda_free(gd_backend *be)
{
    if (!be)
        return;
    cuda_ctx *c = (cuda_ctx *)be->ctx;
    cudaSetDevice(c->device);
    cudaStreamSynchronize(c->stream); /* errors were the caller's to collect with sync */
    for (int s = 0; s < WS_NSLOTS; s++)
        cudaFree(c->ws[s]);
    cublasDestroy(c->blas);
    cudaStreamDestroy(c->stream);
    free(c);
    free(be);
}

extern "C" const char *gd_backend_cuda_precision(const gd_backend *be)
{
    static const char *names[] = {"fp32", "tf32", "bf16"};
    return names[((const cuda_ctx *)be->ctx)->prec];
}

extern "C" void *gd_backend_cuda_stream(const gd_backend *be)
{
    return ((const cuda_ctx *)be->ctx)->stream;
}
