/* cuda_runtime.h of the CPU emulator (tests/emu): the part of the CUDA
 * runtime that geodino's kernels/cuda uses, run on the CPU so that the
 * kernels' arithmetic, indexing and synchronisation are tested where there
 * is no GPU.  Not NVIDIA's header: it declares only what the sources use.
 *
 * Semantics, and what it cannot show (see tests/emu/emu.cpp):
 * - device memory is host memory from a registry; copies, memsets and
 *   GEMM operands are checked against their allocation's bounds, and
 *   fresh allocations are filled with NaN bytes;
 * - every stream is synchronous: work runs when it is queued, so a missing
 *   stream or event dependency cannot show here;
 * - a kernel launch runs every block one after another and the threads of
 *   a block as coroutines that meet at __syncthreads and at warp shuffles;
 *   a barrier that not every thread reaches, or a shuffle with lanes
 *   missing, stops the program with the kernel's name;
 * - threads run in a fixed order, so a data race cannot show either.
 *
 * The runtime's functions have C linkage, as NVIDIA's do, and this header
 * also serves C (the NCCL plugin, kernels/dist/comm_mpi.c): kernels,
 * launches and templates are C++ only. */
#ifndef GD_EMU_CUDA_RUNTIME_H
#define GD_EMU_CUDA_RUNTIME_H

#include <stddef.h>
#include <string.h>

#define GD_CUDA_EMULATOR 1

#ifdef __cplusplus
#include <cmath>
#include <cstring>
#define GD_EMU_DEFAULT(v) = v
#else
#define GD_EMU_DEFAULT(v)
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* One block runs at a time, so a function-level static is the block's
 * shared memory. */
#define __shared__ static

#ifdef __cplusplus
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* set by the scheduler before it resumes a thread */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
#endif

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
};
typedef enum cudaError cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaDeviceAttr {
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
} cudaDeviceAttr;

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02

struct gd_emu_stream;
typedef struct gd_emu_stream *cudaStream_t;
struct gd_emu_event;
typedef struct gd_emu_event *cudaEvent_t;

typedef struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
} cudaDeviceProp;

#ifdef __cplusplus
extern "C" {
#endif
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s GD_EMU_DEFAULT(0));
cudaError_t cudaMemset(void *dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes,
                            cudaStream_t s GD_EMU_DEFAULT(0));

cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);

/* Events: every stream is synchronous, so an event is complete when it is
 * recorded; the calls check their handles. */
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s GD_EMU_DEFAULT(0));
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
template <class T> cudaError_t cudaMalloc(T **p, size_t bytes)
{
    return cudaMalloc((void **)p, bytes);
}
template <class T> cudaError_t cudaMallocHost(T **p, size_t bytes)
{
    return cudaMallocHost((void **)p, bytes);
}

/* ---- the emulator's own interface ------------------------------------------------ */
namespace gd_emu {

/* the first byte..last byte of a device allocation holds [p, p + bytes) */
bool device_range(const void *p, size_t bytes);

void syncthreads(void);
/* the warp exchange behind every shuffle: lane l receives the value of
 * lane src[l] (its own when src[l] is out of the warp) */
unsigned long long shuffle(unsigned mask, unsigned long long bits, int src_lane);

struct launch_config {
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;
};
inline launch_config config(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t stream = 0)
{
    return launch_config{grid, block, shared, stream};
}

/* Runs body(ctx) for every thread of the grid; a bad configuration sets
 * the last error, as a real launch does. */
void run_grid(const char *kernel, const launch_config &c, void (*body)(void *), void *ctx);

template <class F> struct launcher {
    const char *name;
    launch_config c;
    F kernel;
    template <class... A> void operator()(A... args)
    {
        auto call = [&]() { kernel(args...); };
        run_grid(name, c, [](void *p) { (*(decltype(call) *)p)(); }, &call);
    }
};
template <class F> launcher<F> make_launcher(const char *name, const launch_config &c, F f)
{
    return launcher<F>{name, c, f};
}

} // namespace gd_emu

/* k<<<config>>>(args) is rewritten to GD_EMU_LAUNCH(k, config)(args) by
 * tests/emu/cu2cpp.sh before the C++ compiler sees it. */
#define GD_EMU_LAUNCH(k, ...)                                                              \
    ::gd_emu::make_launcher(#k, ::gd_emu::config(__VA_ARGS__),                             \
                            [=](auto... a_) { k(a_...); })

inline void __syncthreads(void) { gd_emu::syncthreads(); }

template <class T> T gd_emu_shfl(unsigned mask, T v, int src_lane)
{
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of more than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    bits = gd_emu::shuffle(mask, bits, src_lane);
    T r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
}
/* width 32 only: the sources use whole warps */
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta)
{
    int lane = (int)(threadIdx.x & 31);
    return gd_emu_shfl(mask, v, lane + (int)delta < 32 ? lane + (int)delta : lane);
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
    return gd_emu_shfl(mask, v, (int)(threadIdx.x & 31) ^ lane_mask);
}
template <class T> T __shfl_sync(unsigned mask, T v, int src_lane)
{
    return gd_emu_shfl(mask, v, src_lane & 31);
}
#endif /* __cplusplus */

#endif
