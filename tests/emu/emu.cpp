/* emu.cpp: the CPU emulator of the CUDA runtime and cuBLAS subset that
 * kernels/cuda uses (headers in tests/emu/include).  It exists so that
 * the CUDA backend's kernels run, under ASan and UBSan, on machines
 * without a GPU: the checks of tests/gpu then compare each kernel with
 * the CPU op here as they do on a GPU.
 *
 * What it shows: wrong indices and shapes, reads of memory never written
 * (fresh device memory is NaN bytes), out-of-bounds accesses (ASan on
 * kernels; bounds checks on copies, memsets and GEMM operands), barriers
 * and shuffles that not every thread reaches, bad launch configurations.
 * What it cannot show: data races and missing synchronisation (threads run
 * in one fixed order, streams are synchronous), the GPU's own rounding
 * (FMA contraction, fast-math intrinsics) and performance.
 *
 * Threads of a block are coroutines (a stack switch of six registers on
 * x86-64, ucontext elsewhere, whose signal-mask system call per switch
 * made the emulator five times slower); a thread gives control back
 * to the block's scheduler at __syncthreads and at every shuffle, and the
 * scheduler releases a barrier when every thread of the block waits at it,
 * and a shuffle when every lane of the warp does.  GD_EMU_ORDER=reverse
 * runs blocks and threads in the other order (see reverse_order). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define GD_EMU_ASAN 1
#else
#define GD_EMU_ASAN 0
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda emulator: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* per host thread, as the runtime's is */
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

/* ---- device memory ----------------------------------------------------------------- */

/* One lock for the whole emulator: the CUDA runtime is thread-safe, and
 * host threads (dino-step's input threads, say) call it concurrently.
 * Kernels run under it, one at a time. */
std::recursive_mutex &api_lock()
{
    static std::recursive_mutex *m = new std::recursive_mutex;
    return *m;
}
#define LOCKED std::lock_guard<std::recursive_mutex> guard_(api_lock())

/* start -> size of every live cudaMalloc; never destroyed, so that atexit
 * handlers can still free device memory */
std::map<uintptr_t, size_t> &allocations()
{
    static std::map<uintptr_t, size_t> *m = new std::map<uintptr_t, size_t>;
    return *m;
}

/* the allocation holding byte p, or end() */
std::map<uintptr_t, size_t>::iterator allocation_of(const void *p)
{
    auto &m = allocations();
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin())
        return m.end();
    --it;
    return a < it->first + it->second ? it : m.end();
}

bool is_device(const void *p) { return allocation_of(p) != allocations().end(); }

/* ---- coroutines ------------------------------------------------------------------------ */

#if defined(__x86_64__)
/* gd_emu_switch(&from, to): saves the callee-saved registers on this
 * stack, stores its pointer in *from, and resumes the stack `to`. */
extern "C" void gd_emu_switch(void **from, void *to);
asm(".pushsection .text\n"
    ".globl gd_emu_switch\n"
    ".type gd_emu_switch, @function\n"
    "gd_emu_switch:\n"
    "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n"
    "    pushq %r13\n    pushq %r14\n    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n    popq %r14\n    popq %r13\n"
    "    popq %r12\n    popq %rbx\n    popq %rbp\n"
    "    ret\n"
    ".size gd_emu_switch, .-gd_emu_switch\n"
    ".popsection\n");

struct fiber {
    void *sp;
};

/* A fresh stack whose first switch "returns" into entry, with the stack
 * aligned as after a call (rsp + 8 a multiple of 16). */
void fiber_init(fiber *f, char *stack, size_t bytes, void (*entry)())
{
    uintptr_t top = ((uintptr_t)stack + bytes) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;          /* entry's own return address: it never returns */
    *--sp = (void *)entry;    /* where gd_emu_switch's ret goes */
    for (int r = 0; r < 6; r++) /* rbp, rbx, r12-r15 */
        *--sp = nullptr;
    f->sp = sp;
}

void fiber_switch(fiber *from, fiber *to) { gd_emu_switch(&from->sp, to->sp); }
#else
struct fiber {
    ucontext_t uc;
};

void fiber_init(fiber *f, char *stack, size_t bytes, void (*entry)())
{
    if (getcontext(&f->uc))
        die("getcontext failed");
    f->uc.uc_stack.ss_sp = stack;
    f->uc.uc_stack.ss_size = bytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, entry, 0);
}

void fiber_switch(fiber *from, fiber *to)
{
    if (swapcontext(&from->uc, &to->uc))
        die("swapcontext failed");
}
#endif

/* ---- the block scheduler ------------------------------------------------------------- */

enum thread_state { RUNNING, AT_BARRIER, AT_SHUFFLE, DONE };

struct emu_thread {
    fiber ctx;
    char *stack;
    thread_state state;
    unsigned shfl_mask;
    int shfl_src;
    unsigned long long shfl_bits;
    void *fake_stack; /* ASan's fake stack while switched out */
};

const size_t STACK_BYTES = 256 * 1024;
const size_t GUARD_BYTES = 4096;

struct block_scheduler {
    std::vector<emu_thread> threads;
    fiber home;
    void *home_fake = nullptr;
    const void *home_bottom = nullptr;
    size_t home_size = 0;
    int current = -1;    /* the coroutine running, -1 for none */
    bool reverse = false; /* GD_EMU_ORDER=reverse (reverse_order) */
    /* threads of the block in each waiting state, and per warp at a shuffle */
    int n_done = 0, n_barrier = 0, n_shuffle = 0;
    int warp_shuffle[32] = {0};
    const char *kernel = "";
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
};

block_scheduler sched;

/* GD_EMU_ORDER=reverse runs the blocks of a grid and the threads of a
 * block in reverse order.  A correct kernel gives the same result in any
 * order; one that depends on the order (a race, a missing barrier, a block
 * that expects another to have run) changes its result. */
bool reverse_order()
{
    static int r = -1;
    if (r < 0) {
        const char *e = getenv("GD_EMU_ORDER");
        if (e && *e && strcmp(e, "reverse") && strcmp(e, "forward"))
            die("GD_EMU_ORDER: '%s' is not forward or reverse", e);
        r = e && !strcmp(e, "reverse");
    }
    return r;
}

/* the k-th of n in the run order */
int in_order(int k, int n) { return sched.reverse ? n - 1 - k : k; }

char *new_stack()
{
    void *p = mmap(nullptr, STACK_BYTES + GUARD_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap of a thread stack failed");
    if (mprotect(p, GUARD_BYTES, PROT_NONE)) /* an overflow faults */
        die("mprotect of a stack guard failed");
    return (char *)p + GUARD_BYTES;
}

/* ASan is told about every stack switch, or it takes a coroutine's frames
 * for overflows of the scheduler's. */
void leaving(void **fake, const void *bottom, size_t size)
{
#if GD_EMU_ASAN
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

void arrived(void *fake, const void **old_bottom, size_t *old_size)
{
#if GD_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, old_bottom, old_size);
#else
    (void)fake, (void)old_bottom, (void)old_size;
#endif
}

void set_thread_index(int t)
{
    threadIdx.x = (unsigned)t % blockDim.x;
    threadIdx.y = (unsigned)t / blockDim.x % blockDim.y;
    threadIdx.z = (unsigned)t / (blockDim.x * blockDim.y);
}

/* A coroutine hands control back to the scheduler (and later resumes). */
void yield_to_scheduler(thread_state why)
{
    emu_thread &t = sched.threads[(size_t)sched.current];
    t.state = why;
    if (why == AT_BARRIER)
        sched.n_barrier++;
    else if (why == AT_SHUFFLE)
        sched.n_shuffle++, sched.warp_shuffle[sched.current >> 5]++;
    leaving(&t.fake_stack, sched.home_bottom, sched.home_size);
    fiber_switch(&t.ctx, &sched.home);
    arrived(t.fake_stack, &sched.home_bottom, &sched.home_size);
}

void coroutine_entry()
{
    arrived(nullptr, &sched.home_bottom, &sched.home_size);
    sched.body(sched.ctx);
    emu_thread &t = sched.threads[(size_t)sched.current];
    t.state = DONE;
    sched.n_done++;
    leaving(nullptr, sched.home_bottom, sched.home_size); /* this stack is done */
    fiber_switch(&t.ctx, &sched.home);
    die("a finished coroutine was resumed");
}

void resume(int i)
{
    emu_thread &t = sched.threads[(size_t)i];
    sched.current = i;
    set_thread_index(i);
    leaving(&sched.home_fake, t.stack, STACK_BYTES);
    fiber_switch(&sched.home, &t.ctx);
    arrived(sched.home_fake, nullptr, nullptr);
    sched.current = -1;
}

/* Every lane of warp w waits at a shuffle with the same mask: hand out the
 * values.  False when the warp is not ready; stops on a mismatch. */
bool release_shuffle(int w, int nthreads)
{
    if (!sched.warp_shuffle[w])
        return false;
    int lo = w * 32, hi = lo + 32 < nthreads ? lo + 32 : nthreads;
    int waiting = 0;
    unsigned mask = 0;
    for (int i = lo; i < hi; i++)
        if (sched.threads[(size_t)i].state == AT_SHUFFLE) {
            if (waiting && sched.threads[(size_t)i].shfl_mask != mask)
                die("%s: lanes of warp %d shuffle with different masks", sched.kernel, w);
            mask = sched.threads[(size_t)i].shfl_mask;
            waiting++;
        }
    if (!waiting)
        return false;
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u))
            continue;
        if (lo + l >= hi)
            die("%s: block %u: shuffle mask %#x names lane %d of warp %d, which does not "
                "exist (blockDim %u)",
                sched.kernel, blockIdx.x, mask, l, w, blockDim.x);
        thread_state s = sched.threads[(size_t)(lo + l)].state;
        if (s == DONE)
            die("%s: block %u: lane %d of warp %d has exited but is in the shuffle mask %#x",
                sched.kernel, blockIdx.x, l, w, mask);
        if (s != AT_SHUFFLE)
            return false; /* still to arrive (or at a barrier: a deadlock, found later) */
    }
    unsigned long long vals[32];
    for (int l = 0; l < hi - lo; l++)
        vals[l] = sched.threads[(size_t)(lo + l)].shfl_bits;
    for (int l = 0; l < hi - lo; l++) {
        emu_thread &t = sched.threads[(size_t)(lo + l)];
        if (t.state != AT_SHUFFLE)
            continue;
        int src = t.shfl_src;
        if (src >= 0 && src < 32 && (mask >> src & 1u))
            t.shfl_bits = vals[src];
        t.state = RUNNING;
    }
    sched.n_shuffle -= sched.warp_shuffle[w];
    sched.warp_shuffle[w] = 0;
    return true;
}

/* Releases the barrier when every thread waits at it; stops on a deadlock. */
void release_barrier(int nthreads)
{
    int at_barrier = sched.n_barrier, done = sched.n_done, at_shuffle = sched.n_shuffle;
    if (at_barrier + done + at_shuffle != nthreads)
        die("%s: emulator bookkeeping: %d at the barrier, %d done, %d at shuffles of %d",
            sched.kernel, at_barrier, done, at_shuffle, nthreads);
    if (at_shuffle)
        die("%s: block %u: deadlock: %d threads wait at a shuffle whose lanes wait at "
            "__syncthreads or have exited",
            sched.kernel, blockIdx.x, at_shuffle);
    if (done)
        die("%s: block %u: __syncthreads reached by %d threads while %d have exited", sched.kernel,
            blockIdx.x, at_barrier, done);
    for (int i = 0; i < nthreads; i++)
        sched.threads[(size_t)i].state = RUNNING;
    sched.n_barrier = 0;
}

void run_block_coroutines(int nthreads)
{
    while ((int)sched.threads.size() < nthreads) {
        emu_thread t{};
        t.stack = new_stack();
        sched.threads.push_back(t);
    }
    for (int i = 0; i < nthreads; i++) {
        emu_thread &t = sched.threads[(size_t)i];
        fiber_init(&t.ctx, t.stack, STACK_BYTES, coroutine_entry);
        t.state = RUNNING;
    }
    sched.n_done = sched.n_barrier = sched.n_shuffle = 0;
    for (int w = 0; w * 32 < nthreads; w++)
        sched.warp_shuffle[w] = 0;
    for (;;) {
        for (int k = 0; k < nthreads; k++) {
            int i = in_order(k, nthreads);
            if (sched.threads[(size_t)i].state == RUNNING)
                resume(i);
        }
        if (sched.n_done == nthreads)
            return;
        bool released = false;
        for (int w = 0; sched.n_shuffle && w * 32 < nthreads; w++)
            released |= release_shuffle(w, nthreads);
        if (!released)
            release_barrier(nthreads);
    }
}

} // namespace

/* ---- the emulator's interface (cuda_runtime.h) ----------------------------------------- */

namespace gd_emu {

bool device_range(const void *p, size_t bytes)
{
    LOCKED;
    auto it = allocation_of(p);
    return it != allocations().end() &&
           (uintptr_t)p - it->first + bytes <= it->second;
}

void syncthreads(void)
{
    if (sched.current < 0)
        die("__syncthreads outside a kernel");
    yield_to_scheduler(AT_BARRIER);
}

unsigned long long shuffle(unsigned mask, unsigned long long bits, int src_lane)
{
    if (sched.current < 0)
        die("a warp shuffle outside a kernel");
    emu_thread &t = sched.threads[(size_t)sched.current];
    t.shfl_mask = mask;
    t.shfl_src = src_lane;
    t.shfl_bits = bits;
    yield_to_scheduler(AT_SHUFFLE);
    return sched.threads[(size_t)sched.current].shfl_bits;
}

void run_grid(const char *kernel, const launch_config &c, void (*body)(void *), void *ctx)
{
    LOCKED;
    unsigned long long nthreads = (unsigned long long)c.block.x * c.block.y * c.block.z;
    if (!nthreads || nthreads > 1024 || c.block.z > 64 || !c.grid.x || !c.grid.y ||
        !c.grid.z || c.grid.y > 65535 || c.grid.z > 65535 || c.shared > 48 * 1024) {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    if (sched.current >= 0 || sched.body)
        die("%s launched from inside kernel %s", kernel, sched.kernel);
    sched.kernel = kernel;
    sched.reverse = reverse_order();
    sched.body = body;
    sched.ctx = ctx;
    gridDim = c.grid;
    blockDim = c.block;
    unsigned long long nblocks = (unsigned long long)c.grid.x * c.grid.y * c.grid.z;
    for (unsigned long long k = 0; k < nblocks; k++) {
        unsigned long long b = sched.reverse ? nblocks - 1 - k : k;
        blockIdx = uint3{(unsigned)(b % c.grid.x), (unsigned)(b / c.grid.x % c.grid.y),
                         (unsigned)(b / c.grid.x / c.grid.y)};
        run_block_coroutines((int)nthreads);
    }
    sched.body = nullptr;
    sched.ctx = nullptr;
}

} // namespace gd_emu

/* for the emulated NCCL in the plugin (tests/emu/nccl_emu.c) */
extern "C" int gd_emu_device_range(const void *p, size_t bytes)
{
    return gd_emu::device_range(p, bytes);
}

/* ---- the runtime --------------------------------------------------------------------- */

/* Stream handles are checked, never used: all work is synchronous. */
struct gd_emu_stream {
    unsigned magic;
};
const unsigned STREAM_MAGIC = 0x57e4a3u;

namespace {

bool bad_stream(cudaStream_t s) { return s && s->magic != STREAM_MAGIC; }

int current_device = 0;

/* GD_EMU_DEVICES=0 emulates a machine without a GPU */
int device_count()
{
    const char *e = getenv("GD_EMU_DEVICES");
    return e && *e ? atoi(e) : 1;
}

} // namespace

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (emulator)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
    LOCKED;
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

cudaError_t cudaGetDeviceCount(int *n)
{
    LOCKED;
    *n = device_count();
    return *n > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaGetDevice(int *d)
{
    LOCKED;
    *d = current_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d)
{
    LOCKED;
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    current_device = d;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    LOCKED;
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "geodino CUDA emulator on the CPU (not a GPU)");
    p->totalGlobalMem = (size_t)8 << 30;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    LOCKED;
    if (d < 0 || d >= device_count())
        return fail(cudaErrorInvalidDevice);
    if (a == cudaDevAttrComputeCapabilityMajor)
        *v = 9;
    else if (a == cudaDevAttrComputeCapabilityMinor)
        *v = 0;
    else
        return fail(cudaErrorInvalidValue);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    LOCKED;
    *p = nullptr;
    if (device_count() <= 0)
        return fail(cudaErrorNoDevice);
    /* 256-byte aligned, as cudaMalloc's are, and exactly `bytes` long, so
     * that ASan sees the first byte past the end; never size 0, so that
     * every allocation has an address of its own */
    void *q = nullptr;
    if (posix_memalign(&q, 256, bytes ? bytes : 1))
        return fail(cudaErrorMemoryAllocation);
    memset(q, 0xff, bytes); /* NaN floats: unwritten reads show */
    allocations()[(uintptr_t)q] = bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    LOCKED;
    if (!p)
        return cudaSuccess;
    auto it = allocations().find((uintptr_t)p);
    if (it == allocations().end())
        return fail(cudaErrorInvalidDevicePointer);
    allocations().erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    LOCKED;
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void *p)
{
    LOCKED;
    if (p && is_device(p))
        return fail(cudaErrorInvalidValue);
    free(p);
    return cudaSuccess;
}

namespace {

/* A side of a copy: device memory must lie inside one allocation; host
 * memory must not be device memory (the kind would be wrong). */
bool side_ok(const void *p, size_t bytes, bool device)
{
    return device ? gd_emu::device_range(p, bytes) : !is_device(p);
}

} // namespace

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s)
{
    LOCKED;
    if (bad_stream(s))
        return fail(cudaErrorInvalidResourceHandle);
    if (!bytes)
        return cudaSuccess;
    bool dst_dev, src_dev;
    switch (k) {
    case cudaMemcpyHostToHost: dst_dev = src_dev = false; break;
    case cudaMemcpyHostToDevice: dst_dev = true, src_dev = false; break;
    case cudaMemcpyDeviceToHost: dst_dev = false, src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    case cudaMemcpyDefault:
        dst_dev = is_device(dst);
        src_dev = is_device(src);
        break;
    default: return fail(cudaErrorInvalidMemcpyDirection);
    }
    if (!side_ok(dst, bytes, dst_dev) || !side_ok(src, bytes, src_dev))
        return fail(cudaErrorInvalidValue);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k)
{
    LOCKED;
    return cudaMemcpyAsync(dst, src, bytes, k, 0);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s)
{
    LOCKED;
    if (bad_stream(s))
        return fail(cudaErrorInvalidResourceHandle);
    if (bytes && !gd_emu::device_range(dst, bytes))
        return fail(cudaErrorInvalidValue);
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes)
{
    LOCKED;
    return cudaMemsetAsync(dst, value, bytes, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    LOCKED;
    *s = nullptr;
    if (flags > cudaStreamNonBlocking)
        return fail(cudaErrorInvalidValue);
    *s = new gd_emu_stream{STREAM_MAGIC};
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    LOCKED;
    if (!s || bad_stream(s))
        return fail(cudaErrorInvalidResourceHandle);
    s->magic = 0;
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    LOCKED;
    return bad_stream(s) ? fail(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

/* Event handles are checked, never waited for: recorded work is done. */
struct gd_emu_event {
    unsigned magic;
};
const unsigned EVENT_MAGIC = 0xe7e47u;

namespace {

bool bad_event(cudaEvent_t e) { return !e || e->magic != EVENT_MAGIC; }

} // namespace

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags)
{
    LOCKED;
    *e = nullptr;
    if (flags & ~(unsigned)cudaEventDisableTiming)
        return fail(cudaErrorInvalidValue);
    *e = new gd_emu_event{EVENT_MAGIC};
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    LOCKED;
    return bad_event(e) || bad_stream(s) ? fail(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    LOCKED;
    return bad_event(e) ? fail(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    LOCKED;
    if (bad_event(e))
        return fail(cudaErrorInvalidResourceHandle);
    e->magic = 0;
    delete e;
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags)
{
    LOCKED;
    if (flags)
        return fail(cudaErrorInvalidValue);
    return bad_event(e) || bad_stream(s) ? fail(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

/* ---- cuBLAS -------------------------------------------------------------------------- */

struct gd_emu_blas {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    LOCKED;
    if (device_count() <= 0)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new gd_emu_blas{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    LOCKED;
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    LOCKED;
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bad_stream(s))
        return CUBLAS_STATUS_INVALID_VALUE;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    LOCKED;
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

namespace {

/* tf32: 10 explicit mantissa bits, rounded to nearest (ties away, as the
 * tensor cores' conversion does) */
float round_tf32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* one element of a column-major operand stored as `type` */
float element(const void *base, cudaDataType type, long long i)
{
    if (type == CUDA_R_16BF)
        return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    return ((const float *)base)[i];
}

size_t type_bytes(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }

/* The elements op(X) of batch `batch` touches, rows x cols of the stored
 * (column-major) matrix with leading dimension ld, lie in one allocation. */
bool operand_ok(const void *X, cudaDataType t, int rows, int cols, int ld, long long stride,
                int batch)
{
    if (!rows || !cols || !batch)
        return true;
    long long last = (long long)(cols - 1) * ld + (rows - 1) + (long long)(batch - 1) * stride;
    return stride >= 0 && gd_emu::device_range(X, (size_t)(last + 1) * type_bytes(t));
}

/* A float dot product in eight interleaved partial sums (fast enough for
 * the recipes' shapes; the order of a GPU's sum is unspecified too). */
float dot(const float *x, const float *y, int k)
{
    float part[8] = {0};
    int p = 0;
    for (; p + 8 <= k; p += 8)
        for (int l = 0; l < 8; l++)
            part[l] += x[p + l] * y[p + l];
    float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; p < k; p++)
        s += x[p] * y[p];
    return s;
}

/* op(X) as a rows x k row-major float copy, row r = element (r, p) of op(X) */
void gather_rows(std::vector<float> &out, const void *X, cudaDataType t, bool trans, int rows,
                 int k, int ld, long long off, bool tf32)
{
    out.resize((size_t)rows * k);
    for (int r = 0; r < rows; r++)
        for (int p = 0; p < k; p++) {
            long long i = trans ? (long long)r * ld + p : (long long)p * ld + r;
            float v = element(X, t, off + i);
            out[(size_t)r * k + p] = tf32 ? round_tf32(v) : v;
        }
}

} // namespace

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long strideA, const void *B,
                                          cudaDataType Btype, int ldb, long long strideB,
                                          const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long strideC, int batchCount,
                                          cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo)
{
    LOCKED;
    (void)algo;
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (Ctype != CUDA_R_32F || Atype != Btype ||
        (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32 &&
         computeType != CUBLAS_COMPUTE_32F_PEDANTIC))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    /* stored: A is (ta ? k x m : m x k), B is (tb ? n x k : k x n), column-major */
    int a_rows = ta ? k : m, b_rows = tb ? n : k;
    if (m < 0 || n < 0 || k < 0 || batchCount < 0 || lda < (a_rows > 1 ? a_rows : 1) ||
        ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!m || !n || !batchCount)
        return CUBLAS_STATUS_SUCCESS;
    float al = *(const float *)alpha, be = *(const float *)beta;
    if (!operand_ok(A, Atype, a_rows, ta ? m : k, lda, strideA, batchCount) ||
        !operand_ok(B, Btype, b_rows, tb ? k : n, ldb, strideB, batchCount) ||
        !operand_ok(C, CUDA_R_32F, m, n, ldc, strideC, batchCount))
        return CUBLAS_STATUS_INVALID_VALUE; /* a real GPU would fault instead */
    bool tf32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32 && Atype == CUDA_R_32F;
    std::vector<float> a, bt;
    for (int b = 0; b < batchCount; b++) {
        gather_rows(a, A, Atype, ta, m, k, lda, b * strideA, tf32);
        gather_rows(bt, B, Btype, !tb, n, k, ldb, b * strideB, tf32);
        float *c = (float *)C + b * strideC;
#pragma omp parallel for schedule(static)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float s = dot(a.data() + (size_t)i * k, bt.data() + (size_t)j * k, k);
                float *cij = &c[(size_t)j * ldc + i];
                *cij = be == 0 ? al * s : al * s + be * *cij; /* beta = 0 never reads C */
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}
