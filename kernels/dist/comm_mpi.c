/* comm_mpi.c: the distributed communicator (libcommon/comm.h) as a plugin
 * that dino-step dlopen()s only for a distributed run, so that a single
 * process never loads libmpi.  Built twice by the Makefile:
 *
 *   lib/geodino-mpi.so    MPI only: collectives on host buffers (the CPU
 *                         backend), MPI_Allreduce in place.
 *   lib/geodino-nccl.so   with -DGD_NCCL: the same, plus NCCL for backend
 *                         buffers in device memory; the GPU is chosen by the
 *                         rank among the node's ranks, the NCCL unique id is
 *                         broadcast over MPI.  Not yet run on a GPU; run by
 *                         make check on the CUDA emulator, with NCCL
 *                         emulated over MPI (tests/emu/nccl_emu.c).
 *
 * The plugin uses nothing of libcommon (the program links it statically and
 * exports none of it), hence its own small error helper.
 *
 * The gradient all-reduce comes in buckets (comm.h: allreduce_start and
 * allreduce_wait), started by the trainer while the backward pass goes on:
 * MPI_Iallreduce on host buffers, each start also moving the earlier ones
 * forward (OpenMPI progresses a nonblocking collective only inside MPI
 * calls); on device buffers ncclAllReduce on the plugin's stream, ordered
 * after the backend's stream by an event.  GEODINO_COMM_EAGER=1 makes
 * every start a blocking reduction: a bucket started before its gradients
 * are final then gives wrong weights every time, which the tests use.
 *
 * The watchdog: each collective records when it started; a thread that
 * makes no MPI call checks every quarter second and, past the timeout,
 * prints one line and _exit()s, which makes mpirun or srun end the job
 * (a rank that exits without MPI_Finalize aborts an OpenMPI job). */
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef GD_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

#include "comm.h"

extern char *program_invocation_short_name;

typedef struct mpi_ctx {
    double timeout_s;
    bool device;                 /* backend buffers are device memory (NCCL) */
    pthread_t watchdog;
    bool watchdog_running;
    atomic_bool quit;
    _Atomic double started;      /* monotonic seconds the current collective began; 0: none */
    const char *_Atomic what;
    gd_comm *c;
    bool eager;                  /* GEODINO_COMM_EAGER: buckets reduced at start */
    MPI_Request *reqs;           /* buckets started on host buffers, not yet waited for */
    int nreq, capreq;
#ifdef GD_NCCL
    ncclComm_t nccl;
    cudaStream_t stream;
    cudaEvent_t ready;           /* the backward pass's kernels so far */
#endif
} mpi_ctx;

static int fail(gd_err *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int mpi_fail(gd_err *err, const char *what, int rc)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, s, &n) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", rc);
    return fail(err, "%s: %s", what, s);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the watchdog ------------------------------------------------------------ */

static void arm(mpi_ctx *x, const char *what)
{
    atomic_store(&x->what, what);
    atomic_store(&x->started, mono());
}

static void disarm(mpi_ctx *x) { atomic_store(&x->started, 0.0); }

static void *watchdog(void *arg)
{
    mpi_ctx *x = arg;
    while (!atomic_load(&x->quit)) {
        usleep(250000);
        double t0 = atomic_load(&x->started);
        if (t0 > 0 && mono() - t0 > x->timeout_s) {
            fprintf(stderr,
                    "%s: rank %d of %d: step %ld: %s has waited more than %g s for the other "
                    "ranks (one died, hangs or is far slower; --comm-timeout): stopping\n",
                    program_invocation_short_name, x->c->rank, x->c->world, x->c->step,
                    atomic_load(&x->what), x->timeout_s);
            fflush(stderr);
            _exit(1);
        }
    }
    return NULL;
}

/* ---- collectives ---------------------------------------------------------------- */

/* MPI counts are ints: large buffers go in pieces */
#define CHUNK ((size_t)1 << 30)

static int host_sum(gd_comm *c, float *buf, size_t n, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "the gradient all-reduce");
    for (size_t o = 0; o < n; o += CHUNK) {
        int k = (int)(n - o < CHUNK ? n - o : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + o, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            disarm(x);
            return mpi_fail(err, "MPI_Allreduce", rc);
        }
    }
    disarm(x);
    return 0;
}

/* The requests of one more bucket: its size in MPI's int counts. */
static int reserve_requests(mpi_ctx *x, size_t n, gd_err *err)
{
    size_t need = (size_t)x->nreq + (n + CHUNK - 1) / CHUNK;
    if (need <= (size_t)x->capreq)
        return 0;
    if (need > 1 << 20)
        return fail(err, "more than %d gradient buckets in flight", 1 << 20);
    int cap = x->capreq ? x->capreq : 64;
    while ((size_t)cap < need)
        cap *= 2;
    MPI_Request *r = realloc(x->reqs, (size_t)cap * sizeof *r);
    if (!r)
        return fail(err, "out of memory");
    x->reqs = r, x->capreq = cap;
    return 0;
}

static int host_start(gd_comm *c, float *buf, size_t n, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    if (x->eager)
        return host_sum(c, buf, n, err);
    if (reserve_requests(x, n, err))
        return -1;
    for (size_t o = 0; o < n; o += CHUNK) {
        int k = (int)(n - o < CHUNK ? n - o : CHUNK);
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + o, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                &x->reqs[x->nreq]);
        if (rc != MPI_SUCCESS)
            return mpi_fail(err, "MPI_Iallreduce", rc);
        x->nreq++;
    }
    int done = 0;
    int rc = MPI_Testall(x->nreq, x->reqs, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Testall", rc);
    if (done)
        x->nreq = 0;
    return 0;
}

static int host_wait(gd_comm *c, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    if (!x->nreq)
        return 0;
    arm(x, "the gradient all-reduce");
    int rc = MPI_Waitall(x->nreq, x->reqs, MPI_STATUSES_IGNORE);
    disarm(x);
    x->nreq = 0;
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Waitall", rc);
}

#ifdef GD_NCCL
static int cuda_fail(gd_err *err, const char *what, cudaError_t e)
{
    return fail(err, "%s: %s", what, cudaGetErrorString(e));
}

static int nccl_fail(gd_err *err, const char *what, ncclResult_t r)
{
    return fail(err, "%s: %s", what, ncclGetErrorString(r));
}

/* The backend has synchronized before the trainer reduces (its loss is
 * downloaded first), so the gradient is complete; the reduction runs on the
 * plugin's stream and is waited for, which keeps the CPU-side order simple. */
static int device_sum(gd_comm *c, float *buf, size_t n, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "the NCCL gradient all-reduce");
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, x->nccl, x->stream);
    cudaError_t e = r == ncclSuccess ? cudaStreamSynchronize(x->stream) : cudaSuccess;
    disarm(x);
    if (r != ncclSuccess)
        return nccl_fail(err, "ncclAllReduce", r);
    if (e != cudaSuccess)
        return cuda_fail(err, "ncclAllReduce", e);
    return 0;
}

/* The bucket's kernels are queued on the backend's stream, maybe not yet
 * run: the plugin's stream waits for them (an event), then reduces while
 * the backend goes on with the rest of the backward pass. */
static int device_start(gd_comm *c, float *buf, size_t n, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    cudaError_t e = cudaEventRecord(x->ready, (cudaStream_t)c->stream);
    if (e == cudaSuccess)
        e = cudaStreamWaitEvent(x->stream, x->ready, 0);
    if (e != cudaSuccess)
        return cuda_fail(err, "ordering the NCCL all-reduce after the backward pass", e);
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, x->nccl, x->stream);
    if (r != ncclSuccess)
        return nccl_fail(err, "ncclAllReduce", r);
    return 0;
}

/* The host waits (under the watchdog, which a stream-side wait would
 * escape): the trainer needs the gradient norms on the host right after. */
static int device_wait(gd_comm *c, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "the NCCL gradient all-reduce");
    cudaError_t e = cudaStreamSynchronize(x->stream);
    disarm(x);
    return e == cudaSuccess ? 0 : cuda_fail(err, "ncclAllReduce", e);
}
#endif

static int mpi_wait(gd_comm *c, gd_err *err)
{
#ifdef GD_NCCL
    if (((mpi_ctx *)c->ctx)->device)
        return device_wait(c, err);
#endif
    return host_wait(c, err);
}

static int mpi_start(gd_comm *c, float *buf, size_t n, gd_err *err)
{
#ifdef GD_NCCL
    mpi_ctx *x = c->ctx;
    if (x->device)
        return device_start(c, buf, n, err) || (x->eager && device_wait(c, err)) ? -1 : 0;
#endif
    return host_start(c, buf, n, err);
}

static int mpi_sum(gd_comm *c, float *buf, size_t n, gd_err *err)
{
#ifdef GD_NCCL
    if (((mpi_ctx *)c->ctx)->device)
        return device_sum(c, buf, n, err);
#endif
    return host_sum(c, buf, n, err);
}

static int mpi_f64(gd_comm *c, double *v, int n, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "an all-reduce of step values");
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    disarm(x);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allreduce", rc);
}

static int mpi_minmax(gd_comm *c, uint64_t v, uint64_t *min, uint64_t *max, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    uint64_t w[2] = {v, ~v}; /* max of ~v is ~min of v: one call */
    arm(x, "the checksum comparison");
    int rc = MPI_Allreduce(MPI_IN_PLACE, w, 2, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    disarm(x);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Allreduce", rc);
    *max = w[0], *min = ~w[1];
    return 0;
}

static int mpi_bcast(gd_comm *c, void *p, size_t n, int root, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "a broadcast");
    for (size_t o = 0; o < n; o += CHUNK) {
        int k = (int)(n - o < CHUNK ? n - o : CHUNK);
        int rc = MPI_Bcast((char *)p + o, k, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            disarm(x);
            return mpi_fail(err, "MPI_Bcast", rc);
        }
    }
    disarm(x);
    return 0;
}

static int mpi_barrier(gd_comm *c, gd_err *err)
{
    mpi_ctx *x = c->ctx;
    arm(x, "a barrier");
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    disarm(x);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Barrier", rc);
}

static void ctx_free(mpi_ctx *x)
{
    if (x->watchdog_running) {
        atomic_store(&x->quit, true);
        pthread_join(x->watchdog, NULL);
    }
#ifdef GD_NCCL
    if (x->nccl)
        ncclCommDestroy(x->nccl);
    if (x->stream)
        cudaStreamDestroy(x->stream);
    if (x->ready)
        cudaEventDestroy(x->ready);
#endif
    free(x->reqs);
    free(x);
}

static int mpi_finalize(gd_comm *c, gd_err *err)
{
    int rc = mpi_barrier(c, err); /* nobody leaves while another still reduces */
    ctx_free(c->ctx);
    int rc2 = MPI_Finalize();
    free(c);
    if (rc)
        return -1;
    return rc2 == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Finalize", rc2);
}

/* ---- start-up --------------------------------------------------------------------- */

/* rank among the ranks that share this node's memory: the GPU to use */
static int local_rank(int *lr, gd_err *err)
{
    MPI_Comm node;
    int rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    if (rc != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Comm_split_type", rc);
    rc = MPI_Comm_rank(node, lr);
    MPI_Comm_free(&node);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Comm_rank", rc);
}

#ifdef GD_NCCL
static int nccl_start(gd_comm *c, mpi_ctx *x, gd_err *err)
{
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess)
        return cuda_fail(err, "cudaGetDeviceCount", e);
    if (ndev < 1)
        return fail(err, "no CUDA device");
    if ((e = cudaSetDevice(c->local_rank % ndev)) != cudaSuccess)
        return cuda_fail(err, "cudaSetDevice", e);
    if ((e = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return cuda_fail(err, "cudaStreamCreate", e);
    if ((e = cudaEventCreateWithFlags(&x->ready, cudaEventDisableTiming)) != cudaSuccess)
        return cuda_fail(err, "cudaEventCreate", e);
    ncclUniqueId id;
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess)
        return nccl_fail(err, "ncclGetUniqueId", r);
    if (mpi_bcast(c, &id, sizeof id, 0, err))
        return -1;
    arm(x, "ncclCommInitRank");
    r = ncclCommInitRank(&x->nccl, c->world, id, c->rank);
    disarm(x);
    return r == ncclSuccess ? 0 : nccl_fail(err, "ncclCommInitRank", r);
}
#endif

static int start(gd_comm *c, mpi_ctx *x, const gd_comm_opts *o, gd_err *err)
{
    int inited = 0, provided = 0, rc;
    if ((rc = MPI_Initialized(&inited)) != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Initialized", rc);
    /* only the training thread calls MPI; the watchdog never does */
    if (!inited && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Init_thread", rc);
    if ((rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN)) != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Comm_set_errhandler", rc);
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, &c->rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(MPI_COMM_WORLD, &c->world)) != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Comm_rank", rc);
    if (local_rank(&c->local_rank, err))
        return -1;
    if (x->timeout_s > 0) {
        if (pthread_create(&x->watchdog, NULL, watchdog, x))
            return fail(err, "cannot start the watchdog thread");
        x->watchdog_running = true;
    }
    if (x->device) {
#ifdef GD_NCCL
        return nccl_start(c, x, err);
#else
        return fail(err, "this plugin has no NCCL (device buffers); use geodino-nccl.so");
#endif
    }
    return 0;
}

int geodino_comm_open(gd_comm *c, const gd_comm_opts *o, gd_err *err);

int geodino_comm_open(gd_comm *c, const gd_comm_opts *o, gd_err *err)
{
    if (o->abi != GD_COMM_ABI)
        return fail(err, "communicator plugin ABI %d, the program has %d: rebuild both",
                    GD_COMM_ABI, o->abi);
    mpi_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return fail(err, "out of memory");
    x->c = c;
    x->timeout_s = o->timeout_s;
    x->device = o->backend && !strcmp(o->backend, "cuda");
    const char *eager = getenv("GEODINO_COMM_EAGER");
    x->eager = eager && !strcmp(eager, "1");
    *c = (gd_comm){.name = x->device ? "mpi+nccl" : "mpi", .ctx = x, .allreduce_sum = mpi_sum,
                   .allreduce_start = mpi_start, .allreduce_wait = mpi_wait,
                   .allreduce_f64 = mpi_f64, .minmax_u64 = mpi_minmax, .bcast = mpi_bcast,
                   .barrier = mpi_barrier, .finalize = mpi_finalize};
    if (start(c, x, o, err)) {
        ctx_free(x);
        c->ctx = NULL;
        return -1;
    }
    return 0;
}
