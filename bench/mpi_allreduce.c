/* bench/mpi_allreduce.c N REPS: the median seconds of an in-place
 * MPI_Allreduce (sum) of N floats over the job's ranks, as dino-step's
 * gradient all-reduce does it; printed by rank 0.  Built by bench/mpi.sh. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS || argc != 3)
        return 2;
    long n = atol(argv[1]);
    int reps = atoi(argv[2]), rank;
    float *buf = calloc((size_t)n, sizeof *buf);
    double *t = calloc((size_t)reps, sizeof *t);
    if (!buf || !t || n < 1 || n > (1L << 30) || reps < 1)
        MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    for (int i = 0; i < reps; i++) {
        if (MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS)
            MPI_Abort(MPI_COMM_WORLD, 1);
        double t0 = MPI_Wtime();
        if (MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            MPI_Abort(MPI_COMM_WORLD, 1);
        t[i] = MPI_Wtime() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    if (rank == 0)
        printf("%.6f\n", t[reps / 2]);
    free(buf), free(t);
    return MPI_Finalize() == MPI_SUCCESS ? 0 : 1;
}
