/* nccl_emu.c: NCCL for the CUDA emulator (tests/emu), linked into the
 * emulated build's geodino-nccl.so.  Device memory is host memory there,
 * so a collective is the MPI collective on the same buffers, run at once
 * (the emulator's streams are synchronous).  What it checks that a GPU
 * would: every rank joins with the id rank 0 made (the plugin's broadcast
 * of it), the rank and the world size agree with MPI's, buffers are the
 * emulator's device memory, and the arguments NCCL refuses are refused. */
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nccl.h>

/* in the program (emu.cpp), exported to plugins by -rdynamic */
extern int gd_emu_device_range(const void *p, size_t bytes);

struct gd_emu_nccl {
    MPI_Comm comm;
    int rank, nranks;
};

const char *ncclGetErrorString(ncclResult_t r)
{
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (emulated NCCL)";
    case ncclSystemError: return "unhandled system error (emulated NCCL: an MPI call failed)";
    case ncclInternalError: return "internal error (emulated NCCL)";
    case ncclInvalidArgument: return "invalid argument (emulated NCCL)";
    case ncclInvalidUsage: return "invalid usage (emulated NCCL)";
    }
    return "unknown result (emulated NCCL)";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    if (!id)
        return ncclInvalidArgument;
    memset(id, 0, sizeof *id);
    /* different on every call, as NCCL's is: host, pid, time */
    uint64_t v[3] = {(uint64_t)gethostid(), (uint64_t)getpid(), (uint64_t)time(NULL)};
    memcpy(id->internal, v, sizeof v);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    int world = 0, me = -1, same = 0;
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
        return ncclInvalidArgument;
    *comm = NULL;
    if (MPI_Comm_size(MPI_COMM_WORLD, &world) != MPI_SUCCESS ||
        MPI_Comm_rank(MPI_COMM_WORLD, &me) != MPI_SUCCESS)
        return ncclSystemError;
    if (world != nranks || me != rank)
        return ncclInvalidUsage; /* the emulation maps NCCL ranks to MPI's */
    /* every rank must hold rank 0's id: compare it with rank 0's copy */
    ncclUniqueId root = id;
    if (MPI_Bcast(&root, sizeof root, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
        return ncclSystemError;
    int mine = !memcmp(&root, &id, sizeof id);
    if (MPI_Allreduce(&mine, &same, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return ncclSystemError;
    if (!same)
        return ncclInvalidUsage; /* a real NCCL would hang or fail to connect */
    struct gd_emu_nccl *c = calloc(1, sizeof *c);
    if (!c)
        return ncclSystemError;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &c->comm) != MPI_SUCCESS) {
        free(c);
        return ncclSystemError;
    }
    c->rank = rank;
    c->nranks = nranks;
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm)
        return ncclInvalidArgument;
    MPI_Comm_free(&comm->comm);
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
    (void)stream; /* synchronous, like every emulated stream */
    if (!comm)
        return ncclInvalidArgument;
    if (type != ncclFloat || op != ncclSum || count > INT32_MAX)
        return ncclInvalidArgument; /* the emulation knows float sums only */
    if (!count)
        return ncclSuccess;
    size_t bytes = count * sizeof(float);
    if (!gd_emu_device_range(send, bytes) || !gd_emu_device_range(recv, bytes))
        return ncclInvalidArgument; /* not device memory: NCCL would fault */
    int rc = MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, (int)count, MPI_FLOAT,
                           MPI_SUM, comm->comm);
    return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}
