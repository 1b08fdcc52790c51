/* comm.h: the communicator of data-parallel training, a small table of
 * collectives behind which MPI (CPU buffers) or NCCL (device buffers) may
 * sit.
 *
 * libcommon holds only the single-process communicator (rank 0 of 1, every
 * collective a no-op) and the loader of the distributed one, which lives in
 * a plugin (lib/geodino-mpi.so, lib/geodino-nccl.so, from kernels/dist/)
 * opened with dlopen() only when a run is distributed: a single-process
 * dino-step never loads libmpi, libnccl or the CUDA runtime.
 *
 * Every collective is called by every rank in the same order; each returns
 * -1 with a message in err when the transport fails.  A plugin runs a
 * watchdog: a collective that waits longer than its timeout (a dead or
 * hung rank) ends the process with a one-line error naming the rank, the
 * collective and the step (gd_comm.step), so that the launcher stops the
 * whole job instead of leaving it hanging. */
#ifndef GD_COMM_H
#define GD_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gd_comm gd_comm;

struct gd_comm {
    const char *name;              /* "single", "mpi", "mpi+nccl" */
    int rank, world, local_rank;   /* local_rank: among the ranks of this node (GPU choice) */
    long step;                     /* the caller's current step, for error messages */
    void *ctx;                     /* transport state */
    /* sum over ranks, in place, of n floats of a BACKEND buffer (host
     * memory for the CPU backend, device memory for CUDA); every rank
     * ends with the same bytes */
    int (*allreduce_sum)(gd_comm *c, float *buf, size_t n, gd_err *err);
    /* The bucketed gradient all-reduce, overlapped with the rest of the
     * backward pass.  start begins the sum over ranks, in place, of n
     * floats of a backend buffer whose values are final (the backward pass
     * will not write them again) and returns without waiting; the buffer
     * must not be read or written until wait.  wait blocks until every
     * reduction started has ended (under the watchdog).  On device buffers
     * a reduction begins after the work already queued on `stream` (the
     * backend's CUDA stream, set by the program) and runs beside the work
     * queued after it. */
    int (*allreduce_start)(gd_comm *c, float *buf, size_t n, gd_err *err);
    int (*allreduce_wait)(gd_comm *c, gd_err *err);
    void *stream;                  /* cudaStream_t of the compute backend; NULL: none */
    /* sum over ranks, in place, of n host doubles (losses, flags) */
    int (*allreduce_f64)(gd_comm *c, double *v, int n, gd_err *err);
    /* the smallest and largest v over ranks (checksums) */
    int (*minmax_u64)(gd_comm *c, uint64_t v, uint64_t *min, uint64_t *max, gd_err *err);
    /* bytes of host memory from root to every rank */
    int (*bcast)(gd_comm *c, void *host, size_t bytes, int root, gd_err *err);
    int (*barrier)(gd_comm *c, gd_err *err);
    /* an orderly end on every rank together; frees c (not the single one) */
    int (*finalize)(gd_comm *c, gd_err *err);
};

/* Rank 0 of 1: a static object whose collectives change nothing. */
gd_comm *gd_comm_single(void);

/* The number of processes a launcher started this one among, from its
 * environment (OMPI_COMM_WORLD_SIZE for mpirun, PMI_SIZE / PMIX_SIZE for
 * MPICH, Hydra and PMIx, SLURM_STEP_NUM_TASKS for srun); 0 when none says. */
int gd_comm_launched_world(void);

/* Options of a distributed communicator. */
typedef struct gd_comm_opts {
    int abi;                       /* GD_COMM_ABI: plugin and program must agree */
    const char *backend;           /* the compute backend's name: "cpu" or "cuda" */
    double timeout_s;              /* the watchdog's limit for one collective; <= 0: none */
} gd_comm_opts;
#define GD_COMM_ABI 2

/* The entry point a plugin exports (kernels/dist/comm_mpi.c). */
typedef int (*gd_comm_plugin_open)(gd_comm *c, const gd_comm_opts *o, gd_err *err);
#define GD_COMM_PLUGIN_SYMBOL "geodino_comm_open"

/* Opens the distributed communicator: the plugin named by the environment
 * variable GEODINO_COMM_PLUGIN, else geodino-nccl.so (backend "cuda") or
 * geodino-mpi.so (otherwise) in the lib/ directory next to the program's
 * bin/.  NULL with a message saying what to install or build. */
gd_comm *gd_comm_open(const gd_comm_opts *o, gd_err *err);

/* FNV-1a over 64-bit little-endian words (then the tail bytes), chained from h (start with GD_HASH_INIT): the
 * weight checksum the consistency guard compares across ranks. */
#define GD_HASH_INIT 0xcbf29ce484222325ULL
uint64_t gd_hash_bytes(uint64_t h, const void *p, size_t n);

/* pattern with every "%r" replaced by the rank and "%%" by "%" into out;
 * -1 when it does not fit or a '%' is followed by anything else. */
int gd_comm_expand(const char *pattern, int rank, char *out, size_t size, gd_err *err);

#ifdef __cplusplus
}
#endif

#endif
