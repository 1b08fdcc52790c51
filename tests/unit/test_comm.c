/* comm.c: the single-process communicator, launcher detection, the
 * checksum and %r expansion; the plugin loader's error.  The MPI plugin
 * itself is exercised by tests/cli/dino-mpi.bats under mpirun. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "test.h"

TEST(comm_single_is_rank_0_of_1_and_changes_nothing)
{
    gd_comm *c = gd_comm_single();
    gd_err err;
    CHECK(c->rank == 0 && c->world == 1 && c->local_rank == 0);
    float x[3] = {1, -2, 3.5f};
    double d[2] = {0.25, 7};
    CHECK(c->allreduce_sum(c, x, 3, &err) == 0 && c->allreduce_f64(c, d, 2, &err) == 0);
    CHECK(x[0] == 1 && x[1] == -2 && x[2] == 3.5f && d[0] == 0.25 && d[1] == 7);
    uint64_t lo = 1, hi = 2;
    CHECK(c->minmax_u64(c, 42, &lo, &hi, &err) == 0 && lo == 42 && hi == 42);
    CHECK(c->bcast(c, x, sizeof x, 0, &err) == 0 && c->barrier(c, &err) == 0);
    CHECK(c->finalize(c, &err) == 0);
    CHECK(gd_comm_single() == c && c->world == 1); /* static: still usable */
}

TEST(comm_launched_world_reads_the_launchers_environment)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"};
    char *saved[4];
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    int none = gd_comm_launched_world();
    setenv("SLURM_NTASKS", "8", 1); /* set in a batch script: no launcher */
    int batch_script = gd_comm_launched_world();
    unsetenv("SLURM_NTASKS");
    setenv("SLURM_STEP_NUM_TASKS", "16", 1);
    int srun = gd_comm_launched_world();
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    int ompi = gd_comm_launched_world();
    setenv("OMPI_COMM_WORLD_SIZE", "two", 1);
    int garbage = gd_comm_launched_world(); /* skipped: srun's value */
    for (int i = 0; i < 4; i++) {
        if (saved[i])
            setenv(vars[i], saved[i], 1);
        else
            unsetenv(vars[i]);
        free(saved[i]);
    }
    CHECK(none == 0 && batch_script == 0);
    CHECK(srun == 16 && ompi == 2 && garbage == 16);
}

TEST(comm_hash_sees_every_byte_and_chains)
{
    unsigned char a[37];
    for (int i = 0; i < 37; i++)
        a[i] = (unsigned char)(i * 7);
    uint64_t h = gd_hash_bytes(GD_HASH_INIT, a, sizeof a);
    CHECK(h == gd_hash_bytes(GD_HASH_INIT, a, sizeof a));
    for (int i = 0; i < 37; i++) { /* in a word or in the tail */
        a[i] ^= 1;
        CHECK_MSG(gd_hash_bytes(GD_HASH_INIT, a, sizeof a) != h, "byte %d", i);
        a[i] ^= 1;
    }
    CHECK(gd_hash_bytes(gd_hash_bytes(GD_HASH_INIT, a, 16), a + 16, 21) == h);
    CHECK(gd_hash_bytes(GD_HASH_INIT, a, 0) == GD_HASH_INIT);
}

TEST(comm_expand_puts_the_rank_for_percent_r)
{
    char out[32];
    gd_err err;
    CHECK(gd_comm_expand("shard%r.mpt", 13, out, sizeof out, &err) == 0);
    CHECK(!strcmp(out, "shard13.mpt"));
    CHECK(gd_comm_expand("/run/%r/in-%r%%", 0, out, sizeof out, &err) == 0);
    CHECK(!strcmp(out, "/run/0/in-0%"));
    CHECK(gd_comm_expand("plain", 5, out, sizeof out, &err) == 0 && !strcmp(out, "plain"));
    CHECK(gd_comm_expand("bad%d", 1, out, sizeof out, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "followed by r");
    CHECK(gd_comm_expand("trailing%", 1, out, sizeof out, &err) == -1);
    CHECK(gd_comm_expand("%r%r%r%r%r%r%r%r", 123456, out, sizeof out, &err) == -1);
    CHECK_STR_CONTAINS(err.msg, "too long");
    CHECK(gd_comm_expand("0123456789012345678901234567890", 0, out, sizeof out, &err) == 0);
    CHECK(gd_comm_expand("01234567890123456789012345678901", 0, out, sizeof out, &err) == -1);
}

TEST(comm_open_names_what_is_missing)
{
    const char *old = getenv("GEODINO_COMM_PLUGIN");
    char *saved = old ? strdup(old) : NULL;
    setenv("GEODINO_COMM_PLUGIN", "/nonexistent/geodino-mpi.so", 1);
    gd_err err;
    gd_comm_opts o = {.backend = "cpu", .timeout_s = 1};
    gd_comm *c = gd_comm_open(&o, &err);
    if (saved)
        setenv("GEODINO_COMM_PLUGIN", saved, 1);
    else
        unsetenv("GEODINO_COMM_PLUGIN");
    free(saved);
    CHECK(c == NULL);
    CHECK_STR_CONTAINS(err.msg, "needs the MPI plugin");
    CHECK_STR_CONTAINS(err.msg, "/nonexistent/geodino-mpi.so");
}
