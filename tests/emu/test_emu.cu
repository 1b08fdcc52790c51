/* test_emu.cu: the CUDA emulator checked against what a GPU does.  Written
 * as CUDA (built through tests/emu/cu2cpp.sh into build-emu/test-emu), so
 * the kernels here are the constructs kernels/cuda relies on: shuffles,
 * barriers with shared memory, 2-D grids, and cuBLAS's column-major GEMM.
 * The last tests check what only the emulator promises: bounds-checked
 * copies, NaN-filled fresh memory, and a stop, naming the kernel, at a
 * barrier that not every thread reaches. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "../unit/test.h"

namespace {

#define CUDA_CHECK(call) CHECK_MSG((call) == cudaSuccess, "%s failed", #call)

__global__ void shfl_down_kernel(int *out, int delta)
{
    int lane = threadIdx.x & 31;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, lane * 3 + 1, delta);
}

TEST(emu_shuffle_down)
{
    int *d = nullptr, h[64];
    CUDA_CHECK(cudaMalloc(&d, sizeof h));
    for (int delta = 1; delta <= 16; delta *= 2) {
        shfl_down_kernel<<<1, 64>>>(d, delta);
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
        for (int t = 0; t < 64; t++) {
            int lane = t & 31, src = lane + delta < 32 ? lane + delta : lane;
            CHECK_MSG(h[t] == src * 3 + 1, "delta %d thread %d: %d, want %d", delta, t, h[t],
                      src * 3 + 1);
        }
    }
    CUDA_CHECK(cudaFree(d));
}

/* every thread reads its neighbour's slot after the barrier: wrong unless
 * all writes came first */
__global__ void rotate_kernel(int *out)
{
    __shared__ int slot[256];
    slot[threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = slot[(threadIdx.x + 1) % blockDim.x];
}

TEST(emu_barrier_orders_shared_memory)
{
    const int B = 3, T = 256;
    int *d = nullptr;
    std::vector<int> h(B * T);
    CUDA_CHECK(cudaMalloc(&d, h.size() * sizeof(int)));
    rotate_kernel<<<B, T>>>(d);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            CHECK(h[(size_t)(b * T + t)] == b * 1000 + (t + 1) % T);
    CUDA_CHECK(cudaFree(d));
}

/* a block sum with warp shuffles and a barrier, as kernels/cuda's
 * block_reduce does */
__global__ void block_sum_kernel(long long *out)
{
    __shared__ long long part[32];
    long long v = threadIdx.x + 1;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        long long s = 0;
        for (unsigned w = 0; w < blockDim.x / 32; w++)
            s += part[w];
        out[blockIdx.x] = s;
    }
}

TEST(emu_block_sum)
{
    long long *d = nullptr, h[2];
    CUDA_CHECK(cudaMalloc(&d, sizeof h));
    block_sum_kernel<<<2, 512>>>(d);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    CHECK(h[0] == 512LL * 513 / 2 && h[1] == h[0]);
    CUDA_CHECK(cudaFree(d));
}

__global__ void coverage_kernel(int *hits, int n)
{
    unsigned bx = blockIdx.y * gridDim.x + blockIdx.x;
    unsigned tx = threadIdx.y * blockDim.x + threadIdx.x;
    unsigned i = bx * (blockDim.x * blockDim.y) + tx;
    if ((int)i < n)
        hits[i] += 1;
}

TEST(emu_2d_grid_covers_every_thread_once)
{
    dim3 grid(3, 5), block(8, 4);
    int n = 3 * 5 * 8 * 4;
    int *d = nullptr;
    std::vector<int> h((size_t)n);
    CUDA_CHECK(cudaMalloc(&d, (size_t)n * sizeof(int)));
    CUDA_CHECK(cudaMemset(d, 0, (size_t)n * sizeof(int)));
    coverage_kernel<<<grid, block>>>(d, n);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpy(h.data(), d, (size_t)n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        CHECK_MSG(h[(size_t)i] == 1, "element %d hit %d times", i, h[(size_t)i]);
    CUDA_CHECK(cudaFree(d));
}

TEST(emu_bad_launch_is_an_error)
{
    int *d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, sizeof(int)));
    coverage_kernel<<<1, 2048>>>(d, 1);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
    CHECK(cudaGetLastError() == cudaSuccess); /* read once, then cleared */
    CUDA_CHECK(cudaFree(d));
}

/* each thread appends its global index: the order the emulator ran them */
__global__ void run_order_kernel(int *seq, int *count)
{
    seq[(*count)++] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
}

TEST(emu_runs_in_the_order_GD_EMU_ORDER_names)
{
    const char *e = getenv("GD_EMU_ORDER");
    bool reverse = e && !strcmp(e, "reverse");
    const int B = 3, T = 64, n = B * T;
    int *seq = nullptr, *count = nullptr;
    std::vector<int> h(n);
    CUDA_CHECK(cudaMalloc(&seq, n * sizeof(int)));
    CUDA_CHECK(cudaMalloc(&count, sizeof(int)));
    CUDA_CHECK(cudaMemset(count, 0, sizeof(int)));
    run_order_kernel<<<B, T>>>(seq, count);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpy(h.data(), seq, n * sizeof(int), cudaMemcpyDeviceToHost));
    for (int k = 0; k < n; k++)
        CHECK_MSG(h[(size_t)k] == (reverse ? n - 1 - k : k), "%s order: run %d was thread %d",
                  reverse ? "reverse" : "forward", k, h[(size_t)k]);
    CUDA_CHECK(cudaFree(seq));
    CUDA_CHECK(cudaFree(count));
}

/* column-major C = alpha op(A) op(B) + beta C, in double */
void gemm_reference(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)(ta ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda]) *
                     (tb ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb]);
            C[i + (size_t)j * ldc] = (float)(alpha * s + beta * C[i + (size_t)j * ldc]);
        }
}

TEST(emu_gemm_against_double)
{
    cublasHandle_t h;
    CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    const int m = 5, n = 4, k = 3, ld = 7; /* ld > every dimension: padding */
    std::vector<float> A(ld * 7), B(ld * 7), C(ld * n), want;
    for (size_t i = 0; i < A.size(); i++) {
        A[i] = (float)((i * 37) % 11) - 5;
        B[i] = (float)((i * 17) % 7) - 3;
    }
    float *dA, *dB, *dC;
    CUDA_CHECK(cudaMalloc(&dA, A.size() * 4));
    CUDA_CHECK(cudaMalloc(&dB, B.size() * 4));
    CUDA_CHECK(cudaMalloc(&dC, C.size() * 4));
    CUDA_CHECK(cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice));
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (size_t i = 0; i < C.size(); i++)
                C[i] = (float)i;
            want = C;
            CUDA_CHECK(cudaMemcpy(dC, C.data(), C.size() * 4, cudaMemcpyHostToDevice));
            float alpha = 2, beta = 0.5f;
            cublasStatus_t st = cublasGemmStridedBatchedEx(
                h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                &alpha, dA, CUDA_R_32F, ld, 0, dB, CUDA_R_32F, ld, 0, &beta, dC, CUDA_R_32F, ld,
                0, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CHECK(st == CUBLAS_STATUS_SUCCESS);
            gemm_reference(ta, tb, m, n, k, alpha, A.data(), ld, B.data(), ld, beta, want.data(),
                           ld);
            CUDA_CHECK(cudaMemcpy(C.data(), dC, C.size() * 4, cudaMemcpyDeviceToHost));
            for (size_t i = 0; i < C.size(); i++) /* small integers: exact */
                CHECK_MSG(C[i] == want[i], "ta=%d tb=%d element %zu: %g, want %g", ta, tb, i,
                          C[i], want[i]);
        }
    float one = 1, zero = 0;
    /* lda below the rows of A, and a B that runs past its allocation */
    CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F,
                                     m - 1, 0, dB, CUDA_R_32F, ld, 0, &zero, dC, CUDA_R_32F, ld,
                                     0, 1, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
    CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F,
                                     ld, 0, dB, CUDA_R_32F, ld, 1000, &zero, dC, CUDA_R_32F, ld,
                                     0, 2, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
    CUDA_CHECK(cudaFree(dA));
    CUDA_CHECK(cudaFree(dB));
    CUDA_CHECK(cudaFree(dC));
    CHECK(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS);
}

TEST(emu_bf16_rounds_to_nearest_even)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even 1;
     * 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 */
    CHECK(__bfloat162float(__float2bfloat16(1.0f + 0x1p-8f)) == 1.0f);
    CHECK(__bfloat162float(__float2bfloat16(1.0f + 3 * 0x1p-8f)) == 1.0f + 0x1p-6f);
    CHECK(__bfloat162float(__float2bfloat16(1.0f + 0x1p-8f + 0x1p-20f)) == 1.0f + 0x1p-7f);
    CHECK(std::isnan(__bfloat162float(__float2bfloat16(NAN))));
    CHECK(std::isinf(__bfloat162float(__float2bfloat16(INFINITY))));
}

/* ---- what the emulator promises beyond a GPU ------------------------------------------ */

TEST(emu_copies_are_bounds_checked)
{
    float *d = nullptr, h[8] = {0};
    CUDA_CHECK(cudaMalloc(&d, 4 * sizeof(float)));
    CHECK(cudaMemcpy(d, h, 8 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(h, d + 2, 3 * sizeof(float), cudaMemcpyDeviceToHost) ==
          cudaErrorInvalidValue);
    CHECK(cudaMemcpy(h, h + 4, sizeof(float), cudaMemcpyHostToDevice) ==
          cudaErrorInvalidValue); /* the destination is host memory */
    CHECK(cudaMemsetAsync(d + 1, 0, 4 * sizeof(float)) == cudaErrorInvalidValue);
    CHECK(cudaFree(h) == cudaErrorInvalidDevicePointer);
    cudaGetLastError();
    CUDA_CHECK(cudaMemcpy(h, d, 4 * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < 4; i++)
        CHECK_MSG(std::isnan(h[i]), "fresh device memory element %d is %g, not NaN", i, h[i]);
    CUDA_CHECK(cudaFree(d));
}

__global__ void half_barrier_kernel(int *out)
{
    if (threadIdx.x < 16)
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void exited_lane_shuffle_kernel(int *out)
{
    if (threadIdx.x == 5)
        return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1);
}

/* Runs launch() in a child process; true when the child stopped with a
 * message on stderr that contains `want`. */
template <class F> bool child_stops_with(F launch, const char *want)
{
    int fds[2];
    if (pipe(fds))
        return false;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        launch();
        _exit(0); /* not stopped: the caller sees status 0 */
    }
    close(fds[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    close(fds[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return false;
    bool stopped = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!stopped || !strstr(buf, want))
        fprintf(stderr, "child (status %d) said: %s\n", status, buf);
    return stopped && strstr(buf, want);
}

TEST(emu_stops_at_a_barrier_only_some_threads_reach)
{
    int *d = nullptr;
    CUDA_CHECK(cudaMalloc(&d, 64 * sizeof(int)));
    CHECK(child_stops_with([&] { half_barrier_kernel<<<1, 64>>>(d); },
                           "half_barrier_kernel: block 0: __syncthreads reached by 16 threads "
                           "while 48 have exited"));
    CHECK(child_stops_with([&] { exited_lane_shuffle_kernel<<<1, 32>>>(d); },
                           "exited_lane_shuffle_kernel: block 0: lane 5 of warp 0 has exited"));
    CUDA_CHECK(cudaFree(d));
}

} // namespace
