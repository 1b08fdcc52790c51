/* comm.c: the single-process communicator and the loader of the
 * distributed one.  See comm.h. */
#include "comm.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- rank 0 of 1 ------------------------------------------------------------ */

static int single_sum(gd_comm *c, float *buf, size_t n, gd_err *err) { return 0; }
static int single_wait(gd_comm *c, gd_err *err) { return 0; }
static int single_f64(gd_comm *c, double *v, int n, gd_err *err) { return 0; }
static int single_bcast(gd_comm *c, void *p, size_t n, int root, gd_err *err) { return 0; }
static int single_barrier(gd_comm *c, gd_err *err) { return 0; }
static int single_finalize(gd_comm *c, gd_err *err) { return 0; }

static int single_minmax(gd_comm *c, uint64_t v, uint64_t *min, uint64_t *max, gd_err *err)
{
    *min = *max = v;
    return 0;
}

gd_comm *gd_comm_single(void)
{
    static gd_comm c = {.name = "single", .rank = 0, .world = 1, .local_rank = 0,
                        .allreduce_sum = single_sum, .allreduce_start = single_sum,
                        .allreduce_wait = single_wait, .allreduce_f64 = single_f64,
                        .minmax_u64 = single_minmax, .bcast = single_bcast,
                        .barrier = single_barrier, .finalize = single_finalize};
    return &c;
}

/* ---- launch detection --------------------------------------------------------- */

int gd_comm_launched_world(void)
{
    /* srun sets SLURM_STEP_NUM_TASKS for its tasks only; SLURM_NTASKS is
     * also set in the batch script itself, where no launcher ran us */
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE",
                                 "SLURM_STEP_NUM_TASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *s = getenv(vars[i]);
        char *end;
        if (!s || !*s)
            continue;
        errno = 0;
        long n = strtol(s, &end, 10);
        if (!errno && !*end && n >= 1 && n <= INT_MAX)
            return (int)n;
    }
    return 0;
}

/* ---- the plugin ------------------------------------------------------------------ */

/* <dir of the program>/../lib/<name> */
static int plugin_path(const char *name, char *out, size_t size, gd_err *err)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0)
        return gd_errno(err, "/proc/self/exe");
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    if ((size_t)snprintf(out, size, "%s/../lib/%s", exe, name) >= size)
        return gd_errf(err, "%s/../lib/%s: path too long", exe, name);
    return 0;
}

gd_comm *gd_comm_open(const gd_comm_opts *o, gd_err *err)
{
    char path[PATH_MAX + 64];
    const char *env = getenv("GEODINO_COMM_PLUGIN");
    bool cuda = o->backend && !strcmp(o->backend, "cuda");
    if (env && *env)
        snprintf(path, sizeof path, "%s", env);
    else if (plugin_path(cuda ? "geodino-nccl.so" : "geodino-mpi.so", path, sizeof path, err))
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return gd_errf(err, "distributed training needs the %s plugin: %s (build it with "
                            "'make' where %s is installed, or set GEODINO_COMM_PLUGIN)",
                       cuda ? "MPI+NCCL" : "MPI", dlerror(),
                       cuda ? "OpenMPI (mpicc), NCCL and nvcc" : "OpenMPI (mpicc)"), NULL;
    gd_comm_plugin_open open_fn;
    *(void **)&open_fn = dlsym(h, GD_COMM_PLUGIN_SYMBOL);
    if (!open_fn)
        return gd_errf(err, "%s: no symbol %s", path, GD_COMM_PLUGIN_SYMBOL), NULL;
    gd_comm *c = calloc(1, sizeof *c);
    if (!c)
        return gd_errf(err, "out of memory"), NULL;
    gd_comm_opts oo = *o;
    oo.abi = GD_COMM_ABI;
    if (open_fn(c, &oo, err)) {
        free(c);
        return NULL;
    }
    /* the library stays loaded: MPI cannot be initialised twice anyway */
    return c;
}

/* ---- helpers ------------------------------------------------------------------------ */

uint64_t gd_hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    for (; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

int gd_comm_expand(const char *pattern, int rank, char *out, size_t size, gd_err *err)
{
    size_t k = 0;
    for (const char *s = pattern; *s; s++) {
        char num[16];
        const char *piece = s;
        size_t len = 1;
        if (*s == '%') {
            s++;
            if (*s == 'r')
                len = (size_t)snprintf(num, sizeof num, "%d", rank), piece = num;
            else if (*s != '%')
                return gd_errf(err, "'%s': '%%' must be followed by r (the rank) or %%", pattern);
        }
        if (k + len >= size)
            return gd_errf(err, "'%s': too long with the rank in it", pattern);
        memcpy(out + k, piece, len);
        k += len;
    }
    out[k] = 0;
    return 0;
}
