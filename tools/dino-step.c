/* dino-step: DINO training as a long-running program.
 *
 *   dino-step init  [model and training options] -o ckpt.mpt
 *   dino-step train --ckpt ckpt.mpt [--steps N] [BATCHES]        (stdin, file, FIFO)
 *   dino-step serve --ckpt ckpt.mpt --socket PATH                (Unix socket, many producers)
 *   dino-step embed --ckpt ckpt.mpt [--list FILE] [ROOT...]      (features for knn-eval)
 *
 * The numerical work is libcommon/dino.c on the backend seam; checkpoints,
 * configuration and metrics are libcommon/trainer.c.  This file parses
 * arguments, moves messages between threads and handles signals. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "comm.h"
#include "io.h"
#include "json.h"
#include "msg.h"
#include "trainer.h"

/* ======================================================================
 * init
 * ====================================================================== */

static void usage_init(void)
{
    printf("Usage: dino-step init [OPTION]... -o CKPT.mpt\n"
           "A fresh DINO checkpoint (student = teacher, center 0, step 0) holding the whole\n"
           "configuration.  Options and defaults are main_dino.py's, with dashes.\n\n"
           "Model:\n"
           "  --arch vit_tiny|vit_small|vit_base   (vit_small)\n"
           "  --patch-size N                 (16)\n"
           "  --out-dim N                    (65536)\n"
           "  --norm-last-layer true|false   (true)\n"
           "  --drop-path-rate R             (0.1)\n"
           "  --in-chans N                   bands (default: from --stats, else 3)\n"
           "  --stats FILE                   tif-stats message of the training data: bands, and\n"
           "                                 the mean/std that dino-step embed normalizes with\n"
           "  --img-size N                   native size of the position embedding (224)\n"
           "  --embed-dim N --depth N --num-heads N --mlp-ratio N   override the arch\n"
           "  --hidden-dim N --bottleneck-dim N                     head sizes (2048, 256)\n"
           "Training:\n"
           "  --momentum-teacher M           (0.996)\n"
           "  --warmup-teacher-temp T        (0.04)\n"
           "  --teacher-temp T               (0.04)\n"
           "  --warmup-teacher-temp-epochs N (0)\n"
           "  --weight-decay W               (0.04)\n"
           "  --weight-decay-end W           (0.4)\n"
           "  --clip-grad C                  (3.0; 0 disables)\n"
           "  --batch-size-per-gpu B         samples per batch message (64)\n"
           "  --world-size N                 processes; lr scales with B * N / 256 (1)\n"
           "  --epochs N                     (100)\n"
           "  --freeze-last-layer N          (1)\n"
           "  --lr LR                        (0.0005, before scaling)\n"
           "  --warmup-epochs N              (10)\n"
           "  --min-lr LR                    (1e-6)\n"
           "  --global-crops-scale A B       (0.4 1)\n"
           "  --local-crops-number N         (8)\n"
           "  --local-crops-scale A B        (0.05 0.4)\n"
           "  --global-size N, --local-size N  crop sides in px (multicrop's), checked against\n"
           "                                 every batch (default: the first batch fixes them)\n"
           "  --seed N                       (0)\n"
           "  --iters-per-epoch N            the schedules' epoch length (required, or:)\n"
           "  --dataset-size N               iters per epoch = N / (B * world size)\n"
           "Output:\n"
           "  -o, --output FILE              the checkpoint (written atomically)\n"
           "  --force                        replace an existing checkpoint\n"
           "  --print-config                 print the configuration, write nothing\n"
           "  -h, --help, --version\n");
}

static bool parse_bool(const char *opt, const char *s)
{
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "1") || !strcmp(s, "yes"))
        return true;
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "0") || !strcmp(s, "no"))
        return false;
    cli_usage("%s: '%s' is not true or false", opt, s);
}

/* An option followed by two numbers: "--global-crops-scale 0.4 1". */
static void two_numbers(const char *opt, int argc, char **argv, double out[2])
{
    out[0] = cli_double(opt, optarg, 0, 1);
    if (optind >= argc)
        cli_usage("%s needs two numbers", opt);
    out[1] = cli_double(opt, argv[optind++], 0, 1);
    if (out[0] > out[1])
        cli_usage("%s: %g > %g", opt, out[0], out[1]);
}

static int cmd_init(int argc, char **argv)
{
    enum {
        O_ARCH = 256, O_PATCH, O_OUTDIM, O_NORMLL, O_DPR, O_INCH, O_STATS, O_IMG, O_EDIM, O_DEPTH,
        O_HEADS, O_MLP, O_HID, O_BN, O_MT, O_WTT, O_TT, O_WTTE, O_WD, O_WDE, O_CLIP, O_BS, O_WORLD,
        O_EPOCHS, O_FREEZE, O_LR, O_WE, O_MINLR, O_GCS, O_LCN, O_LCS, O_SEED, O_IPE, O_DSIZE,
        O_FORCE, O_PRINT, O_GSIZE, O_LSIZE, O_VERSION
    };
    static const struct option longs[] = {
        {"arch", 1, 0, O_ARCH}, {"patch-size", 1, 0, O_PATCH}, {"out-dim", 1, 0, O_OUTDIM},
        {"norm-last-layer", 1, 0, O_NORMLL}, {"drop-path-rate", 1, 0, O_DPR},
        {"in-chans", 1, 0, O_INCH}, {"stats", 1, 0, O_STATS}, {"img-size", 1, 0, O_IMG},
        {"embed-dim", 1, 0, O_EDIM}, {"depth", 1, 0, O_DEPTH}, {"num-heads", 1, 0, O_HEADS},
        {"mlp-ratio", 1, 0, O_MLP}, {"hidden-dim", 1, 0, O_HID}, {"bottleneck-dim", 1, 0, O_BN},
        {"momentum-teacher", 1, 0, O_MT}, {"warmup-teacher-temp", 1, 0, O_WTT},
        {"teacher-temp", 1, 0, O_TT}, {"warmup-teacher-temp-epochs", 1, 0, O_WTTE},
        {"weight-decay", 1, 0, O_WD}, {"weight-decay-end", 1, 0, O_WDE},
        {"clip-grad", 1, 0, O_CLIP}, {"batch-size-per-gpu", 1, 0, O_BS},
        {"world-size", 1, 0, O_WORLD}, {"epochs", 1, 0, O_EPOCHS},
        {"freeze-last-layer", 1, 0, O_FREEZE}, {"lr", 1, 0, O_LR}, {"warmup-epochs", 1, 0, O_WE},
        {"min-lr", 1, 0, O_MINLR}, {"global-crops-scale", 1, 0, O_GCS},
        {"local-crops-number", 1, 0, O_LCN}, {"local-crops-scale", 1, 0, O_LCS},
        {"global-size", 1, 0, O_GSIZE}, {"global-crops-size", 1, 0, O_GSIZE},
        {"local-size", 1, 0, O_LSIZE}, {"local-crops-size", 1, 0, O_LSIZE},
        {"seed", 1, 0, O_SEED}, {"iters-per-epoch", 1, 0, O_IPE}, {"dataset-size", 1, 0, O_DSIZE},
        {"output", 1, 0, 'o'}, {"force", 0, 0, O_FORCE}, {"print-config", 0, 0, O_PRINT},
        {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0}};
    run_config c;
    run_config_defaults(&c);
    const char *arch = "vit_small", *stats = NULL, *out = NULL;
    long patch = 16, out_dim = -1, in_chans = -1, img = -1, edim = -1, depth = -1, heads = -1,
         mlp = -1, hid = -1, bn = -1, ipe = 0, dsize = 0;
    double dpr = -1;
    int norm_ll = -1;
    bool force = false, print = false;
    dino_train_cfg *t = &c.train;
    int o;
    while ((o = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
        switch (o) {
        case O_ARCH: arch = optarg; break;
        case O_PATCH: patch = cli_long("--patch-size", optarg, 1, 64); break;
        case O_OUTDIM: out_dim = cli_long("--out-dim", optarg, 1, 1 << 20); break;
        case O_NORMLL: norm_ll = parse_bool("--norm-last-layer", optarg); break;
        case O_DPR: dpr = cli_double("--drop-path-rate", optarg, 0, 0.99); break;
        case O_INCH: in_chans = cli_long("--in-chans", optarg, 1, 4096); break;
        case O_STATS: stats = optarg; break;
        case O_IMG: img = cli_long("--img-size", optarg, 1, 8192); break;
        case O_EDIM: edim = cli_long("--embed-dim", optarg, 1, 16384); break;
        case O_DEPTH: depth = cli_long("--depth", optarg, 1, 256); break;
        case O_HEADS: heads = cli_long("--num-heads", optarg, 1, 1024); break;
        case O_MLP: mlp = cli_long("--mlp-ratio", optarg, 1, 64); break;
        case O_HID: hid = cli_long("--hidden-dim", optarg, 1, 1 << 16); break;
        case O_BN: bn = cli_long("--bottleneck-dim", optarg, 1, 1 << 16); break;
        case O_MT: t->momentum_teacher = cli_double("--momentum-teacher", optarg, 0, 1); break;
        case O_WTT: t->warmup_teacher_temp = cli_double("--warmup-teacher-temp", optarg, 1e-6, 100); break;
        case O_TT: t->teacher_temp = cli_double("--teacher-temp", optarg, 1e-6, 100); break;
        case O_WTTE: t->warmup_teacher_temp_epochs = (int)cli_long("--warmup-teacher-temp-epochs", optarg, 0, 1 << 20); break;
        case O_WD: t->weight_decay = cli_double("--weight-decay", optarg, 0, 100); break;
        case O_WDE: t->weight_decay_end = cli_double("--weight-decay-end", optarg, 0, 100); break;
        case O_CLIP: t->clip_grad = cli_double("--clip-grad", optarg, 0, 1e9); break;
        case O_BS: c.batch_size = (int)cli_long("--batch-size-per-gpu", optarg, 1, 65536); break;
        case O_WORLD: c.world_size = (int)cli_long("--world-size", optarg, 1, 65536); break;
        case O_EPOCHS: t->epochs = (int)cli_long("--epochs", optarg, 1, 1 << 20); break;
        case O_FREEZE: t->freeze_last_layer = (int)cli_long("--freeze-last-layer", optarg, 0, 1 << 20); break;
        case O_LR: t->lr = cli_double("--lr", optarg, 0, 100); break;
        case O_WE: t->warmup_epochs = (int)cli_long("--warmup-epochs", optarg, 0, 1 << 20); break;
        case O_MINLR: t->min_lr = cli_double("--min-lr", optarg, 0, 100); break;
        case O_GCS: two_numbers("--global-crops-scale", argc, argv, c.global_crops_scale); break;
        case O_LCN: c.local_crops_number = (int)cli_long("--local-crops-number", optarg, 0, 30); break;
        case O_LCS: two_numbers("--local-crops-scale", argc, argv, c.local_crops_scale); break;
        case O_GSIZE: c.global_crops_size = (int)cli_long("--global-size", optarg, 1, 1 << 20); break;
        case O_LSIZE: c.local_crops_size = (int)cli_long("--local-size", optarg, 1, 1 << 20); break;
        case O_SEED: c.seed = (uint64_t)cli_long("--seed", optarg, 0, (long)(~0UL >> 1)); break;
        case O_IPE: ipe = cli_long("--iters-per-epoch", optarg, 1, 1L << 30); break;
        case O_DSIZE: dsize = cli_long("--dataset-size", optarg, 1, 1L << 40); break;
        case 'o': out = optarg; break;
        case O_FORCE: force = true; break;
        case O_PRINT: print = true; break;
        case 'h': usage_init(); exit(0);
        case O_VERSION: cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (optind < argc)
        cli_usage("init: unexpected argument '%s'", argv[optind]);
    if (!out && !print)
        cli_usage("init: -o CKPT.mpt is required");
    if (!ipe == !dsize)
        cli_usage("init: give exactly one of --iters-per-epoch and --dataset-size");
    gd_err err;
    if (stats) {
        msg *sm = msg_read_one(stats, "stats", &err);
        if (!sm)
            cli_fail("%s", err.msg);
        if (run_config_set_stats(&c, sm, &err))
            cli_fail("%s: %s", stats, err.msg);
        msg_free(sm);
        if (in_chans >= 0 && in_chans != c.nstats)
            cli_usage("--in-chans %ld, but %s has %d bands", in_chans, stats, c.nstats);
        in_chans = c.nstats;
    }
    if (dino_model_preset(&c.model, arch, (int)patch, in_chans > 0 ? (int)in_chans : 3))
        cli_usage("--arch: unknown '%s' (vit_tiny, vit_small, vit_base)", arch);
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    dino_model_cfg *m = &c.model;
#define OVR(v, f) if (v >= 0) m->f = (int)v
    OVR(out_dim, out_dim); OVR(img, img_size); OVR(edim, embed_dim); OVR(depth, depth);
    OVR(heads, num_heads); OVR(mlp, mlp_ratio); OVR(hid, hidden_dim); OVR(bn, bottleneck_dim);
#undef OVR
    if (dpr >= 0)
        m->drop_path_rate = (float)dpr;
    if (norm_ll >= 0)
        m->norm_last_layer = norm_ll;
    if (dino_model_check(m, &err))
        cli_usage("init: %s", err.msg);
    if ((c.global_crops_size &&
         crop_size_check(&c, "--global-size: global", c.global_crops_size, &err)) ||
        (c.local_crops_size &&
         crop_size_check(&c, "--local-size: local", c.local_crops_size, &err)))
        cli_usage("init: %s", err.msg);
    if (c.local_crops_size && c.local_crops_number == 0)
        cli_usage("init: --local-size with --local-crops-number 0");
    c.train.batch_size_total = c.batch_size * c.world_size;
    c.dataset_size = dsize;
    t->niter_per_epoch = ipe ? (int)ipe : (int)(dsize / c.train.batch_size_total);
    if (t->niter_per_epoch < 1)
        cli_usage("--dataset-size %ld is smaller than one batch of %d", dsize, c.train.batch_size_total);
    if (print) {
        run_config_print(&c, stdout);
        run_config_free(&c);
        return 0;
    }
    struct stat st;
    if (!force && stat(out, &st) == 0 && S_ISREG(st.st_mode))
        cli_fail("%s: exists (a run's checkpoint?); --force replaces it", out);
    gd_backend *be = gd_backend_cpu();
    batch_shape bs = {.B = 1, .G = 2, .L = 0, .C = m->in_chans, .H = m->patch, .h = 0};
    dino_trainer *tr = run_trainer_new(be, &c, &bs, &err);
    if (!tr)
        cli_fail("init: %s", err.msg);
    if (dino_trainer_init(tr, c.seed, &err) || checkpoint_save(tr, &c, 0, out, 0, &err))
        cli_fail("%s", err.msg);
    dino_trainer_free(tr);
    run_config_free(&c);
    return 0;
}

/* ======================================================================
 * The message queue between input threads and the training thread
 * ====================================================================== */

/* A client connection of serve mode (NULL for train's single input). */
typedef struct conn {
    int fd, id;
    int refs;
    bool dropped;
    pthread_mutex_t wlock;
} conn;

typedef enum { IT_MSG, IT_END, IT_ERROR } item_kind;

typedef struct item {
    item_kind kind;
    msg *m;
    staged_batch *sb;        /* a batch message, converted by the input thread */
    conn *c;
    char err[1024];
} item;

#define QCAP 4
static struct {
    pthread_mutex_t lock;
    pthread_cond_t nonempty, nonfull;
    item items[QCAP];
    int head, n;
} Q = {.lock = PTHREAD_MUTEX_INITIALIZER, .nonempty = PTHREAD_COND_INITIALIZER, .nonfull = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;

static void conn_ref(conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&conn_lock);
    c->refs++;
    pthread_mutex_unlock(&conn_lock);
}

static void conn_unref(conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&conn_lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&conn_lock);
    if (last) {
        close(c->fd);
        pthread_mutex_destroy(&c->wlock);
        free(c);
    }
}

static void q_push(item *it)
{
    pthread_mutex_lock(&Q.lock);
    while (Q.n == QCAP)
        pthread_cond_wait(&Q.nonfull, &Q.lock);
    conn_ref(it->c);
    Q.items[(Q.head + Q.n++) % QCAP] = *it;
    pthread_cond_signal(&Q.nonempty);
    pthread_mutex_unlock(&Q.lock);
}

/* 1: *it is the next item; 0: none within ms milliseconds. */
static int q_pop(item *it, int ms)
{
    pthread_mutex_lock(&Q.lock);
    if (Q.n == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        while (Q.n == 0)
            if (pthread_cond_timedwait(&Q.nonempty, &Q.lock, &ts) == ETIMEDOUT)
                break;
    }
    int got = Q.n > 0;
    if (got) {
        *it = Q.items[Q.head];
        Q.head = (Q.head + 1) % QCAP;
        Q.n--;
        pthread_cond_signal(&Q.nonfull);
    }
    pthread_mutex_unlock(&Q.lock);
    return got;
}

/* ======================================================================
 * Batches staged by the input threads
 * ====================================================================== */

/* An input thread converts each batch message into a staged_batch
 * (trainer.h: float32 views in the backend's host memory, page-locked on
 * the GPU) while the training thread computes, which then only uploads
 * it.  Staged buffers go round through a pool; the input threads stage
 * under stage_lock, which the end of a run takes to stop them before the
 * backend closes. */
#define POOL_CAP (QCAP + 2) /* the queue's, the one being read, the one being trained */
static struct {
    pthread_mutex_t lock, stage_lock;
    staged_batch *free[POOL_CAP];
    int n;
    gd_backend *be; /* NULL: no staging (before a run's backend, after its end) */
} P = {.lock = PTHREAD_MUTEX_INITIALIZER, .stage_lock = PTHREAD_MUTEX_INITIALIZER};

/* NULL when the message is no batch or staging is off: the training
 * thread then converts it itself (views_fill), with the same errors. */
static staged_batch *stage_batch(const msg *m)
{
    if (strcmp(m->kind, "batch"))
        return NULL;
    pthread_mutex_lock(&P.stage_lock);
    staged_batch *sb = NULL;
    if (P.be) {
        pthread_mutex_lock(&P.lock);
        sb = P.n ? P.free[--P.n] : NULL;
        pthread_mutex_unlock(&P.lock);
        if (sb || (sb = calloc(1, sizeof *sb)))
            staged_batch_make(sb, P.be, m);
    }
    pthread_mutex_unlock(&P.stage_lock);
    return sb;
}

static void unstage(staged_batch *sb)
{
    if (!sb)
        return;
    pthread_mutex_lock(&P.lock);
    if (P.be && P.n < POOL_CAP) {
        P.free[P.n++] = sb;
        sb = NULL;
    }
    gd_backend *be = P.be;
    pthread_mutex_unlock(&P.lock);
    if (sb && be)
        staged_batch_free(sb, be);
    free(sb); /* without a backend its buffer goes with the process */
}

static void staging_start(gd_backend *be) { P.be = be; }

/* Before the backend closes: no input thread stages any more, the pool's
 * buffers are freed. */
static void staging_stop(void)
{
    pthread_mutex_lock(&P.stage_lock);
    pthread_mutex_lock(&P.lock);
    gd_backend *be = P.be;
    P.be = NULL;
    for (int i = 0; i < P.n; i++) {
        staged_batch_free(P.free[i], be);
        free(P.free[i]);
    }
    P.n = 0;
    pthread_mutex_unlock(&P.lock);
    pthread_mutex_unlock(&P.stage_lock);
}

/* ======================================================================
 * Signals
 * ====================================================================== */

static volatile sig_atomic_t sig_stop, sig_save;

static void on_signal(int s)
{
    if (s == SIGUSR1)
        sig_save = 1;
    else
        sig_stop = s;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Input threads run with these signals blocked: the training thread
 * handles them. */
static int start_thread(void *(*fn)(void *), void *arg)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    pthread_t th;
    int rc = pthread_create(&th, NULL, fn, arg);
    if (rc == 0)
        pthread_detach(th);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* ======================================================================
 * The training state shared by train and serve
 * ====================================================================== */

/* What train and serve do with a checkpoint that has trained (step > 0). */
typedef enum {
    RESUME_CONTINUE,   /* --resume (default): its step, moments, center, schedules */
    RESUME_RESTART,    /* --restart: its weights, as step 0 of a new schedule */
    RESUME_REFUSE      /* --no-resume: an error; only a fresh (step 0) one is trained */
} resume_mode;

typedef struct run {
    const char *ckpt, *log_path;
    resume_mode resume;
    long steps_max;          /* this invocation; 0: no limit */
    long save_every, log_every;
    int keep;
    bool progress, collapse_check;
    long collapse_window;
    gd_backend *be;          /* opened after the communicator: a rank's GPU */
    const char *device, *precision;
    run_config cfg;
    msg *ck;                 /* the loaded checkpoint, until the trainer exists */
    dino_trainer *t;
    views v;
    long step, start_step, saved_step, end_step;
    FILE *log;
    float *center;
    /* latest metrics, for the log and serve's stats */
    bool have_stats;
    dino_step_stats st;
    step_metrics mx;
    bool have_mx;
    double samples_per_s;
    long collapse_run;
    bool collapse_warned;
    double t_last_log;
    long steps_since_log;
    /* data-parallel training (DISTRIBUTED in the man page) */
    gd_comm *comm;           /* the single-process one unless distributed */
    long check_every;        /* steps between weight checksums; 0: off */
    double comm_timeout;     /* seconds a collective may wait */
    size_t bucket_bytes;     /* gradient all-reduce buckets; 0: one after backward;
                              * BUCKET_AUTO: by backend */
    int distributed;         /* --distributed: 1; -1: from the launcher's environment */
} run;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --bucket auto: NCCL reduces on a stream of its own, beside the backward
 * kernels, so buckets overlap; on the CPU backend they were slower
 * (bench/results-mpi.md: OpenMPI moves a nonblocking collective only inside
 * MPI calls, and the ranks have no core to spare) */
#define BUCKET_AUTO SIZE_MAX
static size_t bucket_floats(const run *r)
{
    size_t bytes = r->bucket_bytes;
    if (bytes == BUCKET_AUTO)
        bytes = strcmp(r->be->name, "cuda") ? 0 : (size_t)25 << 20;
    return bytes / sizeof(float);
}

static void run_load(run *r)
{
    gd_err err;
    r->ck = msg_read_one(r->ckpt, "checkpoint", &err);
    if (!r->ck)
        cli_fail("%s", err.msg);
    if (run_config_from_meta(&r->cfg, &r->ck->meta, &err))
        cli_fail("%s: %s", r->ckpt, err.msg);
    const value *s = value_get(&r->ck->meta, "step");
    if (!s || s->type != V_INT || s->u.i < 0)
        cli_fail("%s: meta step: missing or negative", r->ckpt);
    r->step = r->start_step = r->saved_step = (long)s->u.i;
    if (r->step > 0 && r->resume == RESUME_REFUSE)
        cli_fail("%s: has trained %ld steps and --no-resume was given (--resume continues it, "
                 "--restart starts a new schedule from its weights)", r->ckpt, r->step);
    if (r->step > 0 && r->resume == RESUME_RESTART) {
        cli_warn("%s: --restart: step %ld -> 0; the weights are kept, the optimizer moments, "
                 "center and schedules start afresh", r->ckpt, r->step);
        r->step = r->start_step = r->saved_step = 0;
    }
    r->end_step = (long)r->cfg.train.epochs * r->cfg.train.niter_per_epoch;
    if (r->save_every < 0)
        r->save_every = r->cfg.train.niter_per_epoch;
    if (!(r->center = malloc(r->cfg.model.out_dim * sizeof(float))))
        cli_fail("out of memory");
    if (r->comm->rank == 0 && r->log_path && !(r->log = fopen(r->log_path, "a")))
        cli_fail("%s: %s", r->log_path, strerror(errno));
}

/* The trainer exists from the first batch on (its shape fixes the views). */
static int run_start(run *r, const msg *batch, gd_err *err)
{
    batch_shape s;
    if (batch_shape_of(batch, &s, err) || batch_check(&r->cfg, &s, err))
        return -1;
    run_config_fix_sizes(&r->cfg, &s); /* saved with the configuration from now on */
    r->t = run_trainer_new(r->be, &r->cfg, &s, err);
    if (!r->t)
        return -1;
    if ((r->resume == RESUME_RESTART ? checkpoint_restore_weights : checkpoint_restore)(r->t, r->ck,
                                                                                       err))
        return gd_err_prefix(err, "%s", r->ckpt);
    dino_trainer_set_comm(r->t, r->comm);
    dino_trainer_set_buckets(r->t, bucket_floats(r));
    if (views_init(&r->v, r->be, &s, err))
        return -1;
    msg_free(r->ck);
    r->ck = NULL;
    return 0;
}

static int run_save(run *r, gd_err *err)
{
    if (!r->t || r->step == r->saved_step)
        return 0;
    if (r->comm->rank == 0 && checkpoint_save(r->t, &r->cfg, r->step, r->ckpt, r->keep, err))
        return -1;
    r->saved_step = r->step;
    return 0;
}

static void write_log(run *r)
{
    FILE *f = r->log;
    const dino_step_stats *st = &r->st;
    fprintf(f, "{\"step\": %ld, \"epoch\": %ld, \"loss\": ", r->step,
            (r->step - 1) / r->cfg.train.niter_per_epoch);
    json_write_number(f, st->loss);
    fputs(", \"lr\": ", f), json_write_number(f, st->lr);
    fputs(", \"wd\": ", f), json_write_number(f, st->weight_decay);
    fputs(", \"momentum\": ", f), json_write_number(f, st->momentum);
    fputs(", \"teacher_temp\": ", f), json_write_number(f, st->teacher_temp);
    fputs(", \"grad_norm\": {\"backbone\": ", f), json_write_number(f, r->mx.grad_norm_backbone);
    fputs(", \"head\": ", f), json_write_number(f, r->mx.grad_norm_head);
    fputs(", \"last_layer\": ", f), json_write_number(f, r->mx.grad_norm_last_layer);
    fputs(", \"total\": ", f), json_write_number(f, r->mx.grad_norm_total);
    fprintf(f, "}, \"clipped\": %d, \"last_layer_frozen\": %s", st->nclipped,
            st->last_layer_frozen ? "true" : "false");
    fputs(", \"teacher_entropy\": ", f), json_write_number(f, r->mx.teacher_entropy);
    fputs(", \"teacher_mean_entropy\": ", f), json_write_number(f, r->mx.teacher_mean_entropy);
    fputs(", \"kl\": ", f), json_write_number(f, r->mx.kl);
    fputs(", \"samples_per_s\": ", f), json_write_number(f, r->samples_per_s);
    fputs("}\n", f);
    if (fflush(f) != 0)
        cli_warn("%s: write error: %s", r->log_path, strerror(errno));
}

/* Collapse: the teacher's output has been uniform (each row's entropy
 * near ln K) or one-hot on one dimension (the batch mean's entropy near
 * 0) for collapse_window steps in a row. */
static void check_collapse(run *r)
{
    double lnK = log((double)r->cfg.model.out_dim);
    bool uniform = r->mx.teacher_entropy > 0.98 * lnK;
    bool onehot = r->mx.teacher_mean_entropy < 0.02 * lnK;
    r->collapse_run = uniform || onehot ? r->collapse_run + 1 : 0;
    if (r->collapse_run == 0)
        r->collapse_warned = false;
    if (r->collapse_run >= r->collapse_window && !r->collapse_warned) {
        cli_warn("step %ld: collapse? the teacher output has been %s for %ld steps "
                 "(entropy %.4g, of the batch mean %.4g, ln(out_dim) %.4g)",
                 r->step, uniform ? "uniform" : "one-hot", r->collapse_run, r->mx.teacher_entropy,
                 r->mx.teacher_mean_entropy, lnK);
        r->collapse_warned = true;
    }
}

/* A batch into the views (the first one also makes the trainer).  0: ok;
 * -1: the batch is unusable (err says why; the state is unchanged); -2:
 * training cannot go on. */
static int run_prepare(run *r, const msg *batch, const staged_batch *sb, gd_err *err)
{
    if (!r->t && run_start(r, batch, err))
        return r->t ? -2 : -1;
    return (sb ? views_fill_staged(&r->v, sb, err) : views_fill(&r->v, batch, err)) ? -1 : 0;
}

static int run_check(run *r, gd_err *err);
static int test_perturb(run *r, gd_err *err);

/* One training step on the prepared views: 0, or -2. */
static int run_prepared_step(run *r, gd_err *err)
{
    double t0 = now();
    if (r->t_last_log == 0)
        r->t_last_log = t0;
    bool log_now = (r->log || r->progress) && (r->step + 1 - r->start_step) % r->log_every == 0;
    bool metrics = log_now || r->collapse_check;
    if (metrics && dino_trainer_get_center(r->t, r->center, err))
        return -2;
    r->comm->step = r->step;
    if (dino_trainer_step(r->t, r->v.dev, r->step, &r->st, err))
        return -2;
    r->step++;
    if (test_perturb(r, err))
        return -2;
    r->have_stats = true;
    r->steps_since_log++;
    if (metrics) {
        if (step_metrics_compute(r->be, r->t, &r->cfg, r->center, r->st.teacher_temp, r->st.loss,
                                 log_now, &r->mx, err))
            return -2;
        r->have_mx = true;
    }
    if (r->collapse_check)
        check_collapse(r);
    if (log_now) {
        double t1 = now();
        r->samples_per_s =
            r->steps_since_log * r->cfg.batch_size * r->comm->world / (t1 - r->t_last_log);
        r->t_last_log = t1;
        r->steps_since_log = 0;
        if (r->log)
            write_log(r);
        if (r->progress)
            fprintf(stderr, "\rdino-step: step %ld epoch %ld loss %.4f lr %.3g %.1f samples/s   ",
                    r->step, (r->step - 1) / r->cfg.train.niter_per_epoch, r->st.loss, r->st.lr,
                    r->samples_per_s);
    }
    /* checked before saved: a diverged state is never written */
    if (r->check_every > 0 && r->step % r->check_every == 0 && run_check(r, err))
        return -2;
    if (r->save_every > 0 && r->step % r->save_every == 0 && run_save(r, err))
        return -2;
    return 0;
}

/* One training step on a batch: run_prepare's and run_prepared_step's codes. */
static int run_step(run *r, const msg *batch, const staged_batch *sb, gd_err *err)
{
    int rc = run_prepare(r, batch, sb, err);
    return rc ? rc : run_prepared_step(r, err);
}

static void run_free(run *r)
{
    if (r->progress)
        fputc('\n', stderr);
    staging_stop();
    views_free(&r->v);
    dino_trainer_free(r->t);
    gd_backend_close(r->be);
    msg_free(r->ck);
    free(r->center);
    run_config_free(&r->cfg);
    if (r->log && fclose(r->log) != 0)
        cli_warn("%s: write error", r->log_path);
}

/* Options common to train and serve. */
enum {
    T_CKPT = 300, T_STEPS, T_SAVE, T_KEEP, T_LOG, T_LOGE, T_COLL, T_COLLW, T_DEVICE, T_QUIET,
    T_PROGRESS, T_RESUME, T_RESTART, T_NORESUME, T_SOCKET, T_MAXMSG, T_VERSION, T_DIST, T_CHECK,
    T_CTIMEOUT, T_PRECISION, T_BUCKET
};
static const struct option train_longs[] = {
    {"ckpt", 1, 0, T_CKPT}, {"steps", 1, 0, T_STEPS}, {"save-every", 1, 0, T_SAVE},
    {"keep", 1, 0, T_KEEP}, {"log", 1, 0, T_LOG}, {"log-every", 1, 0, T_LOGE},
    {"collapse-check", 0, 0, T_COLL}, {"collapse-window", 1, 0, T_COLLW},
    {"device", 1, 0, T_DEVICE}, {"precision", 1, 0, T_PRECISION}, {"quiet", 0, 0, T_QUIET},
    {"progress", 0, 0, T_PROGRESS}, {"resume", 0, 0, T_RESUME}, {"restart", 0, 0, T_RESTART},
    {"no-resume", 0, 0, T_NORESUME}, {"socket", 1, 0, T_SOCKET},
    {"max-message", 1, 0, T_MAXMSG}, {"distributed", 1, 0, T_DIST}, {"check-every", 1, 0, T_CHECK},
    {"comm-timeout", 1, 0, T_CTIMEOUT}, {"bucket", 1, 0, T_BUCKET},
    {"help", 0, 0, 'h'}, {"version", 0, 0, T_VERSION}, {0, 0, 0, 0}};

static void usage_train(void)
{
    printf("Usage: dino-step train --ckpt CKPT.mpt [OPTION]... [BATCHES]\n"
           "       dino-step serve --ckpt CKPT.mpt --socket PATH [OPTION]...\n"
           "Trains from `batch` messages (multicrop), one DINO iteration per message, from\n"
           "BATCHES (a file or FIFO; default '-', standard input) or, with serve, from any\n"
           "number of producers connected to a Unix-domain socket.  The run continues from\n"
           "the checkpoint's step (init makes step 0; see --restart) and stops at the end\n"
           "of the input, after --steps, at the end of the schedule (epochs), or on\n"
           "SIGTERM/SIGINT (the current step finishes and the checkpoint is saved; exit 0).\n"
           "SIGUSR1 saves.\n\n"
           "  --ckpt FILE          checkpoint to continue from and to save to (atomically)\n"
           "  --steps N            at most N steps in this run\n"
           "  --save-every N       save every N steps (default: every epoch; 0: only at the end)\n"
           "  --keep K             keep the K newest copies CKPT-<step>.mpt of the saves\n"
           "  --log FILE           JSON lines of metrics (appended)\n"
           "  --log-every N        every N steps (default 10)\n"
           "  --collapse-check     warn when the teacher output stays uniform or one-hot\n"
           "  --collapse-window N  ... for N steps in a row (default 100)\n"
           "  --device auto|cpu|cuda[:N]  compute backend (auto: CUDA when built and a GPU is\n"
           "                       present, else the CPU; default: $GEODINO_DEVICE or auto)\n"
           "  --precision auto|fp32|tf32|bf16  GEMM operands on the GPU (auto: bf16 where the\n"
           "                       GPU has it); accumulation, weights and optimizer stay fp32\n"
           "  --quiet, --progress  progress line on stderr: never / always (default: terminal)\n"
           "  --resume             continue a trained checkpoint exactly: its step, weights,\n"
           "                       AdamW moments and step counts, center, schedules (default)\n"
           "  --restart            start a new schedule (step 0) from its weights: moments,\n"
           "                       center and step counts zero, as after init\n"
           "  --no-resume          refuse a checkpoint that has trained (step > 0)\n"
           "train only, data-parallel (mpirun -np N / srun dino-step train ...):\n"
           "  --distributed auto|yes|no   use MPI (auto: when a launcher started several ranks)\n"
           "  --check-every N      compare the ranks' weight checksums every N steps (100; 0: off)\n"
           "  --comm-timeout S     a collective waiting S seconds for a dead rank fails (1800)\n"
           "  --bucket SIZE|auto   all-reduce the gradients in buckets of SIZE bytes (K, M, G)\n"
           "                       while backward goes on; 0: one after backward; auto (the\n"
           "                       default): 25M on the GPU, 0 on the CPU\n"
           "  BATCHES may hold %%r, replaced by the rank (shard%%r.mpt)\n"
           "serve only:\n"
           "  --socket PATH        Unix socket to listen on (mode 0600)\n"
           "  --max-message SIZE   largest message a client may send (default 256M)\n"
           "  -h, --help, --version\n");
}

/* --device's default: GEODINO_DEVICE, else auto (backend.h) */
static const char *default_device(void)
{
    gd_err err;
    const char *d = gd_backend_default_device(&err);
    if (!d)
        cli_usage("%s", err.msg);
    return d;
}

/* The backend by name (backend.h): bad names are usage errors, a device
 * that cannot be opened a runtime one. */
static gd_backend *pick_device(const char *d, const char *precision)
{
    if (!d)
        d = default_device();
    gd_err err;
    if (gd_backend_check_names(d, precision, &err))
        cli_usage("%s", err.msg);
    gd_backend *be = gd_backend_open(d, precision, &err);
    if (!be)
        cli_fail("--device %s: %s", d, err.msg);
    return be;
}

static size_t parse_size(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
    if (shift)
        end++;
    if (errno || end == s || *end || n == 0 || n > (1ULL << 34) >> shift)
        cli_usage("%s: '%s' is not a size (bytes, K, M, G; at most 16G)", opt, s);
    return (size_t)n << shift;
}

static void parse_dist(run *r, int o, const char *v)
{
    if (o == T_CHECK)
        r->check_every = cli_long("--check-every", v, 0, 1L << 40);
    else if (o == T_CTIMEOUT)
        r->comm_timeout = cli_double("--comm-timeout", v, 0.1, 1e7);
    else if (o == T_BUCKET)
        r->bucket_bytes = !strcmp(v, "auto") ? BUCKET_AUTO
                          : strcmp(v, "0")   ? parse_size("--bucket", v)
                                             : 0;
    else if (!strcmp(v, "auto"))
        r->distributed = -1;
    else
        r->distributed = parse_bool("--distributed", v);
}

static void parse_train(int argc, char **argv, run *r, const char **socket_path, size_t *max_msg,
                        bool serve)
{
    memset(r, 0, sizeof *r);
    r->save_every = -1;
    r->log_every = 10;
    r->comm = gd_comm_single();
    r->distributed = -1;
    r->check_every = 100;
    r->comm_timeout = 1800;
    r->bucket_bytes = BUCKET_AUTO;
    r->collapse_window = 100;
    bool quiet = false, progress = false, resume_set = false;
    const char *device = NULL, *precision = "auto";
    int o;
    while ((o = getopt_long(argc, argv, "h", train_longs, NULL)) != -1) {
        switch (o) {
        case T_CKPT: r->ckpt = optarg; break;
        case T_STEPS: r->steps_max = cli_long("--steps", optarg, 1, 1L << 40); break;
        case T_SAVE: r->save_every = cli_long("--save-every", optarg, 0, 1L << 40); break;
        case T_KEEP: r->keep = (int)cli_long("--keep", optarg, 0, 100000); break;
        case T_LOG: r->log_path = optarg; break;
        case T_LOGE: r->log_every = cli_long("--log-every", optarg, 1, 1L << 40); break;
        case T_COLL: r->collapse_check = true; break;
        case T_COLLW: r->collapse_window = cli_long("--collapse-window", optarg, 1, 1L << 40); break;
        case T_DEVICE: device = optarg; break;
        case T_PRECISION: precision = optarg; break;
        case T_QUIET: quiet = true; break;
        case T_PROGRESS: progress = true; break;
        case T_RESUME:
        case T_RESTART:
        case T_NORESUME: {
            resume_mode m = o == T_RESUME    ? RESUME_CONTINUE
                            : o == T_RESTART ? RESUME_RESTART
                                             : RESUME_REFUSE;
            if (resume_set && m != r->resume)
                cli_usage("--resume, --restart and --no-resume exclude each other");
            r->resume = m, resume_set = true;
            break;
        }
        case T_SOCKET:
            if (!serve)
                cli_usage("--socket belongs to 'dino-step serve'");
            *socket_path = optarg;
            break;
        case T_DIST:
        case T_CHECK:
        case T_CTIMEOUT:
        case T_BUCKET:
            if (serve)
                cli_usage("--distributed, --check-every, --comm-timeout and --bucket belong to "
                          "'dino-step train'");
            parse_dist(r, o, optarg);
            break;
        case T_MAXMSG:
            if (!serve)
                cli_usage("--max-message belongs to 'dino-step serve'");
            *max_msg = parse_size("--max-message", optarg);
            break;
        case 'h': usage_train(); exit(0);
        case T_VERSION: cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (!r->ckpt)
        cli_usage("--ckpt CKPT.mpt is required (make one with 'dino-step init')");
    if (serve && !*socket_path)
        cli_usage("serve: --socket PATH is required");
    if (!device)
        device = default_device();
    gd_err err;
    if (gd_backend_check_names(device, precision, &err))
        cli_usage("%s", err.msg);
    r->device = device, r->precision = precision;
    r->progress = cli_progress_enabled(quiet, progress);
}

/* ======================================================================
 * train: one input stream
 * ====================================================================== */

typedef struct stream_src {
    const char *path;
    long max;                /* messages to read; 0: all */
} stream_src;

static void *stream_thread(void *arg)
{
    stream_src *s = arg;
    gd_err err;
    item it = {0};
    msg_reader *rd = msg_reader_open(s->path, &err);
    if (!rd) {
        it.kind = IT_ERROR;
        snprintf(it.err, sizeof it.err, "%s", err.msg);
        q_push(&it);
        return NULL;
    }
    for (long n = 0; !s->max || n < s->max; n++) {
        msg *m;
        int rc = msg_reader_next(rd, &m, &err);
        if (rc <= 0) {
            it.kind = rc == 0 ? IT_END : IT_ERROR;
            snprintf(it.err, sizeof it.err, "%s", rc ? err.msg : "");
            q_push(&it);
            msg_reader_close(rd);
            return NULL;
        }
        it = (item){.kind = IT_MSG, .m = m, .sb = stage_batch(m)};
        q_push(&it);
    }
    it = (item){.kind = IT_END};
    q_push(&it);
    msg_reader_close(rd);
    return NULL;
}

/* The communicator: the single-process one unless --distributed is given
 * or a launcher (mpirun, srun) started more than one process; then the
 * plugin, which alone loads MPI (and NCCL). */
static void open_comm(run *r)
{
    int launched = gd_comm_launched_world();
    if (r->distributed == 0 || (r->distributed < 0 && launched < 2)) {
        r->comm = gd_comm_single();
        return;
    }
    gd_err err;
    gd_comm_opts o = {.backend = gd_backend_kind(r->device), .timeout_s = r->comm_timeout};
    if (!(r->comm = gd_comm_open(&o, &err)))
        cli_fail("distributed training: %s", err.msg);
    r->progress = r->progress && r->comm->rank == 0;
}

/* The backend, after the communicator: a rank of a distributed run takes
 * the GPU of its local rank, the one the NCCL plugin selected. */
static void open_backend(run *r)
{
    static char device[64];
    gd_backend_rank_device(r->device, r->comm->local_rank, device, sizeof device);
    r->be = pick_device(device, r->precision);
    if (r->comm != gd_comm_single()) /* NCCL orders its reductions after the backward kernels */
        r->comm->stream = gd_backend_stream(r->be);
}

/* The consistency guard: every rank hashes its weights (student and
 * teacher) and the hashes must agree. */
static int run_check(run *r, gd_err *err)
{
    if (r->comm->world < 2 || !r->t)
        return 0;
    size_t n = dino_trainer_nfloats(r->t);
    float *w = malloc(n * sizeof *w);
    if (!w)
        return gd_errf(err, "out of memory");
    uint64_t h = GD_HASH_INIT, lo, hi;
    for (dino_role role = DINO_STUDENT; role <= DINO_TEACHER; role++) {
        if (r->be->download(r->be, w, dino_trainer_buffer(r->t, role), n, err)) {
            free(w);
            return -1;
        }
        h = gd_hash_bytes(h, w, n * sizeof *w);
    }
    free(w);
    if (r->comm->minmax_u64(r->comm, h, &lo, &hi, err))
        return -1;
    if (lo != hi)
        return gd_errf(err, "step %ld: the ranks' weights differ (rank %d has checksum %016llx, "
                            "the ranks span %016llx to %016llx): stopping",
                       r->step, r->comm->rank, (unsigned long long)h, (unsigned long long)lo,
                       (unsigned long long)hi);
    return 0;
}

/* For the tests of the guard: GEODINO_TEST_PERTURB=RANK:STEP nudges one
 * student weight of that rank after that step. */
static int test_perturb(run *r, gd_err *err)
{
    const char *s = getenv("GEODINO_TEST_PERTURB");
    int rank;
    long step;
    if (!s || sscanf(s, "%d:%ld", &rank, &step) != 2 || rank != r->comm->rank || step != r->step)
        return 0;
    float *w = dino_trainer_buffer(r->t, DINO_STUDENT), x;
    if (r->be->download(r->be, &x, w, 1, err))
        return -1;
    x += 1e-3f;
    return r->be->upload(r->be, w, &x, 1, err);
}

static int cmd_train(int argc, char **argv)
{
    run r;
    parse_train(argc, argv, &r, NULL, NULL, false);
    const char *input = "-";
    if (optind < argc)
        input = argv[optind++];
    if (optind < argc)
        cli_usage("train: unexpected argument '%s'", argv[optind]);
    open_comm(&r);
    open_backend(&r);
    static char input_r[4096];
    gd_err perr;
    if (gd_comm_expand(input, r.comm->rank, input_r, sizeof input_r, &perr))
        cli_usage("%s", perr.msg);
    input = input_r;
    run_load(&r);
    if (r.comm->world > 1 && r.cfg.world_size != r.comm->world)
        cli_fail("%s: the run was made for --world-size %d, this job has %d ranks", r.ckpt,
                 r.cfg.world_size, r.comm->world);
    install_signals();
    if (r.step >= r.end_step) {
        cli_warn("%s: step %ld: the schedule (%d epochs of %d iterations) is complete", r.ckpt,
                 r.step, r.cfg.train.epochs, r.cfg.train.niter_per_epoch);
        run_free(&r);
        return 0;
    }
    long want = r.end_step - r.step;
    if (r.steps_max && r.steps_max < want)
        want = r.steps_max;
    static stream_src src;
    src = (stream_src){.path = input, .max = want};
    staging_start(r.be);
    if (start_thread(stream_thread, &src))
        cli_fail("cannot start the input thread");
    gd_err err;
    int status = 0;
    item it = {0};
    bool have = false; /* it is this rank's next item, not yet used */
    for (;;) {
        /* Each round, every rank waits for a batch, the end of its input or
         * a signal, then all agree on what happens (one small all-reduce;
         * a no-op for one process): so they save, stop and step together. */
        while (!have && !sig_stop && !sig_save)
            have = q_pop(&it, 100);
        enum { F_STOP, F_SAVE, F_BATCH, F_END, F_BAD, NF };
        double f[NF] = {[F_STOP] = sig_stop != 0, [F_SAVE] = sig_save != 0};
        sig_save = 0;
        if (have && it.kind == IT_MSG) {
            int rc = run_prepare(&r, it.m, it.sb, &err);
            if (rc == -2)
                cli_fail("%s", err.msg);
            if (rc == -1)
                cli_warn("%s: message %ld: %s", input, r.step - r.start_step + 1, err.msg);
            f[rc ? F_BAD : F_BATCH] = 1;
        } else if (have) {
            if (it.kind == IT_ERROR)
                cli_warn("%s", it.err);
            f[it.kind == IT_ERROR ? F_BAD : F_END] = 1;
        }
        bool mine_bad = f[F_BAD] > 0;
        if (r.comm->allreduce_f64(r.comm, f, NF, &err))
            cli_fail("%s", err.msg);
        if (f[F_SAVE] > 0 && run_save(&r, &err))
            cli_fail("%s", err.msg);
        if (f[F_BAD] > 0) {
            if (!mine_bad)
                cli_warn("rank %d: step %ld: another rank's input failed", r.comm->rank, r.step);
            status = 1;
            break;
        }
        if (f[F_STOP] > 0 || f[F_END] > 0)
            break;
        if (f[F_BATCH] < r.comm->world)
            continue; /* a save while some rank still waited for its batch */
        int rc = run_prepared_step(&r, &err);
        msg_free(it.m);
        unstage(it.sb);
        have = false;
        if (rc) {
            /* a non-finite loss or a device error: the state may be bad, the
             * last checkpoint is the last good one */
            cli_fail("%s; %s (step %ld) is kept", err.msg, r.ckpt, r.saved_step);
        }
    }
    if (have && it.kind == IT_MSG) {
        msg_free(it.m);
        unstage(it.sb);
    }
    if (run_save(&r, &err))
        cli_fail("%s", err.msg);
    if (status)
        cli_warn("%s saved at step %ld", r.ckpt, r.saved_step);
    if (r.comm->finalize(r.comm, &err))
        cli_fail("%s", err.msg);
    r.comm = NULL;
    run_free(&r);
    return status;
}

/* ======================================================================
 * serve: a Unix-domain socket, any number of producers and controllers
 * ====================================================================== */

static size_t serve_max_msg = (size_t)256 << 20;

static int send_reply(conn *c, const char *command, bool ok, const char *error, const run *r)
{
    msg *m = msg_new("reply");
    if (!m)
        return -1;
    value *meta = &m->meta;
    bool good = value_set_str(meta, "command", command ? command : "") &&
                value_set_bool(meta, "ok", ok);
    if (error)
        good = good && value_set_str(meta, "error", error);
    if (r) {
        good = good && value_set_int(meta, "step", r->step) &&
               value_set_int(meta, "epoch", r->step / r->cfg.train.niter_per_epoch) &&
               value_set_int(meta, "saved_step", r->saved_step) &&
               value_set_str(meta, "checkpoint", r->ckpt);
        if (r->have_stats) {
            good = good && value_set_float(meta, "loss", r->st.loss) &&
                   value_set_float(meta, "lr", r->st.lr) &&
                   value_set_float(meta, "wd", r->st.weight_decay) &&
                   value_set_float(meta, "momentum", r->st.momentum) &&
                   value_set_float(meta, "teacher_temp", r->st.teacher_temp);
        }
        if (r->have_mx)
            good = good && value_set_float(meta, "teacher_entropy", r->mx.teacher_entropy) &&
                   value_set_float(meta, "kl", r->mx.kl) &&
                   value_set_float(meta, "samples_per_s", r->samples_per_s);
    }
    gd_err err;
    int rc = -1;
    if (good) {
        pthread_mutex_lock(&c->wlock);
        rc = msg_write_fd(c->fd, m, &err);
        pthread_mutex_unlock(&c->wlock);
    }
    msg_free(m);
    return rc;
}

/* Answers with an error and closes the connection; the server goes on. */
static void drop_conn(conn *c, const char *command, const char *why)
{
    pthread_mutex_lock(&conn_lock);
    bool already = c->dropped;
    c->dropped = true;
    pthread_mutex_unlock(&conn_lock);
    if (already)
        return;
    cli_warn("client %d: %s (connection closed)", c->id, why);
    send_reply(c, command, false, why, NULL);
    shutdown(c->fd, SHUT_RDWR);
}

static void *conn_thread(void *arg)
{
    conn *c = arg;
    gd_err err;
    char name[32];
    snprintf(name, sizeof name, "client %d", c->id);
    msg_reader *rd = msg_reader_from_fd(c->fd, name, &err);
    if (!rd) {
        conn_unref(c);
        return NULL;
    }
    msg_reader_set_max_bytes(rd, serve_max_msg);
    for (;;) {
        msg *m;
        int rc = msg_reader_next(rd, &m, &err);
        if (rc == 0)
            break;
        if (rc < 0) {
            pthread_mutex_lock(&conn_lock);
            bool dropped = c->dropped;
            pthread_mutex_unlock(&conn_lock);
            if (!dropped)
                drop_conn(c, NULL, err.msg);
            break;
        }
        item it = {.kind = IT_MSG, .m = m, .sb = stage_batch(m), .c = c};
        q_push(&it);
    }
    msg_reader_close(rd);
    conn_unref(c);
    return NULL;
}

static int listen_fd = -1;
static const char *sock_path;

static void *accept_thread(void *arg)
{
    (void)arg;
    static int next_id = 1;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
                if (errno == EMFILE || errno == ENFILE)
                    usleep(100000);
                continue;
            }
            return NULL;
        }
        /* a client that does not read its replies cannot block the server */
        struct timeval tv = {.tv_sec = 2};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->id = next_id++;
        c->refs = 1;
        pthread_mutex_init(&c->wlock, NULL);
        if (start_thread(conn_thread, c)) {
            close(fd);
            pthread_mutex_destroy(&c->wlock);
            free(c);
        }
    }
}

static void unlink_socket(void)
{
    if (sock_path)
        unlink(sock_path);
}

static void serve_listen(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        cli_usage("--socket: '%s' is longer than %zu bytes", path, sizeof sa.sun_path - 1);
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            cli_fail("%s: exists and is not a socket", path);
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
            cli_fail("socket: %s", strerror(errno));
        if (connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0)
            cli_fail("%s: another server is listening on this socket", path);
        close(probe);
        if (errno != ECONNREFUSED)
            cli_fail("%s: %s", path, strerror(errno));
        unlink(path); /* stale: its server is gone */
    }
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        cli_fail("socket: %s", strerror(errno));
    mode_t old = umask(0077);
    int rc = bind(listen_fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0)
        cli_fail("%s: %s", path,
                 errno == EADDRINUSE ? "another server is listening on this socket" : strerror(errno));
    sock_path = path;
    atexit(unlink_socket);
    if (chmod(path, 0600) < 0 || listen(listen_fd, 64) < 0)
        cli_fail("%s: %s", path, strerror(errno));
}

static int cmd_serve(int argc, char **argv)
{
    run r;
    const char *path = NULL;
    parse_train(argc, argv, &r, &path, &serve_max_msg, true);
    if (optind < argc)
        cli_usage("serve: unexpected argument '%s'", argv[optind]);
    if (gd_comm_launched_world() > 1)
        cli_usage("serve is one process; data-parallel training is 'dino-step train' under "
                  "mpirun or srun");
    open_backend(&r);
    run_load(&r);
    install_signals();
    serve_listen(path);
    staging_start(r.be);
    if (start_thread(accept_thread, NULL))
        cli_fail("cannot start the accept thread");
    if (r.progress)
        fprintf(stderr, "dino-step: serving %s at step %ld on %s\n", r.ckpt, r.step, path);
    gd_err err;
    long done = 0;
    for (;;) {
        if (sig_save) {
            sig_save = 0;
            if (run_save(&r, &err))
                cli_fail("%s", err.msg);
        }
        if (sig_stop || (r.steps_max && done >= r.steps_max) || r.step >= r.end_step)
            break;
        item it;
        if (!q_pop(&it, 100))
            continue;
        conn *c = it.c;
        bool dropped;
        pthread_mutex_lock(&conn_lock);
        dropped = c->dropped;
        pthread_mutex_unlock(&conn_lock);
        if (dropped) {
            /* queued before its connection was closed: not trusted any more */
        } else if (!strcmp(it.m->kind, "batch")) {
            int rc = run_step(&r, it.m, it.sb, &err);
            if (rc == -1)
                drop_conn(c, NULL, err.msg);
            else if (rc == -2)
                cli_fail("%s; %s (step %ld) is kept", err.msg, r.ckpt, r.saved_step);
            else
                done++;
        } else if (!strcmp(it.m->kind, "control")) {
            const char *cmd = value_str(&it.m->meta, "command", NULL);
            if (!cmd)
                drop_conn(c, NULL, "control message without meta \"command\"");
            else if (!strcmp(cmd, "save")) {
                if (run_save(&r, &err))
                    send_reply(c, cmd, false, err.msg, &r);
                else
                    send_reply(c, cmd, true, NULL, &r);
            } else if (!strcmp(cmd, "stats")) {
                send_reply(c, cmd, true, NULL, &r);
            } else if (!strcmp(cmd, "stop")) {
                if (run_save(&r, &err))
                    cli_fail("%s", err.msg);
                send_reply(c, cmd, true, NULL, &r);
                msg_free(it.m);
                unstage(it.sb);
                conn_unref(c);
                break;
            } else {
                char why[160];
                snprintf(why, sizeof why, "unknown command \"%.60s\" (save, stats, stop)", cmd);
                drop_conn(c, cmd, why);
            }
        } else {
            char why[160];
            snprintf(why, sizeof why, "a \"%.60s\" message; the server takes batch and control",
                     it.m->kind);
            drop_conn(c, NULL, why);
        }
        msg_free(it.m);
        unstage(it.sb);
        conn_unref(c);
    }
    if (run_save(&r, &err))
        cli_fail("%s", err.msg);
    if (r.progress)
        fprintf(stderr, "dino-step: stopped at step %ld\n", r.step);
    close(listen_fd);
    run_free(&r);
    /* input threads may be blocked in read(): the process ends them */
    return 0;
}


/* ======================================================================
 * embed: backbone features of whole tiles, for knn-eval
 * ====================================================================== */

typedef struct sample {
    char *path, *label;
} sample;

typedef struct samples {
    sample *s;
    size_t n, cap;
} samples;

static void add_sample(samples *ss, const char *path, const char *label)
{
    if (ss->n == ss->cap) {
        size_t cap = ss->cap ? 2 * ss->cap : 64;
        sample *g = realloc(ss->s, cap * sizeof *g);
        if (!g)
            cli_fail("out of memory");
        ss->s = g, ss->cap = cap;
    }
    sample *x = &ss->s[ss->n++];
    x->path = strdup(path);
    x->label = label ? strdup(label) : NULL;
    if (!x->path || (label && !x->label))
        cli_fail("out of memory");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_tiff_name(const char *n)
{
    size_t l = strlen(n);
    return (l > 4 && !strcasecmp(n + l - 4, ".tif")) || (l > 5 && !strcasecmp(n + l - 5, ".tiff"));
}

/* Sorted names in a directory: sub-directories (dirs) or TIFF files. */
static size_t list_dir(const char *dir, bool dirs, char ***out)
{
    DIR *d = opendir(dir);
    if (!d)
        cli_fail("%s: %s", dir, strerror(errno));
    char **v = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) < 0)
            continue;
        if (dirs ? !S_ISDIR(st.st_mode) : !(S_ISREG(st.st_mode) && is_tiff_name(e->d_name)))
            continue;
        char **g = realloc(v, (n + 1) * sizeof *v);
        if (!g || !(g[n] = strdup(e->d_name)))
            cli_fail("out of memory");
        v = g;
        n++;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof *v, cmp_str);
    *out = v;
    return n;
}

/* ImageFolder: root/<class>/<tile>.tif, classes in name order. */
static void add_image_folder(samples *ss, const char *root)
{
    char **cls;
    size_t nc = list_dir(root, true, &cls);
    if (nc == 0)
        cli_fail("%s: no class sub-directories (ImageFolder layout: ROOT/CLASS/TILE.tif)", root);
    for (size_t i = 0; i < nc; i++) {
        char d[4096];
        snprintf(d, sizeof d, "%s/%s", root, cls[i]);
        char **files;
        size_t nf = list_dir(d, false, &files);
        for (size_t k = 0; k < nf; k++) {
            char p[8192];
            snprintf(p, sizeof p, "%s/%s", d, files[k]);
            add_sample(ss, p, cls[i]);
            free(files[k]);
        }
        free(files);
        free(cls[i]);
    }
    free(cls);
}

static void read_label_list(samples *ss, const char *list)
{
    char **lines = NULL;
    size_t n = 0;
    gd_err err;
    if (read_lines(list, &lines, &n, &err) < 0)
        cli_fail("%s", err.msg);
    for (size_t i = 0; i < n; i++) {
        char *sp = strrchr(lines[i], ' '), *tab = strrchr(lines[i], '\t');
        if (tab > sp)
            sp = tab;
        if (!sp)
            cli_fail("%s: \"%s\": expected \"PATH LABEL\"", list, lines[i]);
        *sp = 0;
        char *path = lines[i];
        size_t l = strlen(path);
        while (l && (path[l - 1] == ' ' || path[l - 1] == '\t'))
            path[--l] = 0;
        if (!*path)
            cli_fail("%s: \"%s\": expected \"PATH LABEL\"", list, sp + 1);
        add_sample(ss, path, sp + 1);
    }
    free_lines(lines, n);
}

static bool all_ints(const samples *ss)
{
    for (size_t i = 0; i < ss->n; i++) {
        char *end;
        errno = 0;
        long v = strtol(ss->s[i].label, &end, 10);
        if (errno || end == ss->s[i].label || *end || v < 0 || v > (1L << 30))
            return false;
    }
    return true;
}

static void usage_embed(void)
{
    printf("Usage: dino-step embed --ckpt CKPT.mpt [OPTION]... [ROOT|TILE]...\n"
           "Backbone features (the CLS token after the final norm, as DINO's k-NN\n"
           "evaluation; with --avgpool also the mean patch token) of whole tiles, as a\n"
           "`features` message for knn-eval.  Tiles are\n"
           "normalized with the stats the run was initialised with, then centre-cropped to\n"
           "the largest square that is a multiple of the patch size (all tiles must agree).\n"
           "Labels: --list lines \"PATH LABEL\", or ImageFolder roots (ROOT/CLASS/*.tif, classes\n"
           "in name order); a TILE argument has no class (label 0, class \"unlabeled\").\n"
           "Integer labels are kept as they are; names become indices in sorted order.\n\n"
           "  --ckpt FILE              the checkpoint\n"
           "  --which teacher|student  whose backbone (default teacher, as DINO evaluates)\n"
           "  --avgpool                CLS and mean of the normed patch tokens, interleaved\n"
           "                           (2 x embed_dim), as DINO's eval_linear --avgpool_patchtokens\n"
           "  --list FILE              \"PATH LABEL\" lines\n"
           "  --stats FILE             normalize with this stats message instead\n"
           "  --batch-size N           tiles per forward pass, even (default 4)\n"
           "  -o, --output FILE        the features message (default: standard output)\n"
           "  --device auto|cpu|cuda[:N], --precision auto|fp32|tf32|bf16  as for train\n"
           "  -h, --help, --version\n");
}

static int cmd_embed(int argc, char **argv)
{
    enum { E_CKPT = 400, E_WHICH, E_LIST, E_STATS, E_BS, E_DEV, E_PREC, E_AVG, E_VERSION };
    static const struct option longs[] = {
        {"ckpt", 1, 0, E_CKPT}, {"which", 1, 0, E_WHICH}, {"list", 1, 0, E_LIST},
        {"stats", 1, 0, E_STATS}, {"batch-size", 1, 0, E_BS}, {"output", 1, 0, 'o'},
        {"device", 1, 0, E_DEV}, {"precision", 1, 0, E_PREC}, {"avgpool", 0, 0, E_AVG},
        {"help", 0, 0, 'h'}, {"version", 0, 0, E_VERSION}, {0, 0, 0, 0}};
    const char *ckpt = NULL, *list = NULL, *stats = NULL, *out = "-",
               *device = NULL, *precision = "auto";
    dino_role role = DINO_TEACHER;
    long bs = 4;
    bool avgpool = false;
    int o;
    while ((o = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
        switch (o) {
        case E_CKPT: ckpt = optarg; break;
        case E_WHICH:
            if (!strcmp(optarg, "teacher"))
                role = DINO_TEACHER;
            else if (!strcmp(optarg, "student"))
                role = DINO_STUDENT;
            else
                cli_usage("--which: '%s' is not teacher or student", optarg);
            break;
        case E_LIST: list = optarg; break;
        case E_STATS: stats = optarg; break;
        case E_BS: bs = cli_long("--batch-size", optarg, 2, 4096); break;
        case 'o': out = optarg; break;
        case E_DEV: device = optarg; break;
        case E_PREC: precision = optarg; break;
        case E_AVG: avgpool = true; break;
        case 'h': usage_embed(); exit(0);
        case E_VERSION: cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (!ckpt)
        cli_usage("embed: --ckpt CKPT.mpt is required");
    if (bs % 2)
        cli_usage("--batch-size: %ld is odd", bs);
    gd_backend *be = pick_device(device, precision);
    samples ss = {0};
    if (list)
        read_label_list(&ss, list);
    for (int i = optind; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
            add_image_folder(&ss, argv[i]);
        else
            add_sample(&ss, argv[i], "unlabeled");
    }
    if (ss.n == 0)
        cli_usage("embed: no tiles (give --list, ImageFolder roots or tiles)");
    gd_err err;
    msg *ck = msg_read_one(ckpt, "checkpoint", &err);
    if (!ck)
        cli_fail("%s", err.msg);
    run_config cfg;
    if (run_config_from_meta(&cfg, &ck->meta, &err))
        cli_fail("%s: %s", ckpt, err.msg);
    if (stats) {
        msg *sm = msg_read_one(stats, "stats", &err);
        if (!sm || run_config_set_stats(&cfg, sm, &err))
            cli_fail("%s: %s", stats, err.msg);
        msg_free(sm);
    }
    /* labels */
    int32_t *labels = malloc(ss.n * sizeof *labels);
    char **names = malloc(ss.n * sizeof *names);
    if (!labels || !names)
        cli_fail("out of memory");
    size_t nclasses = 0;
    bool ints = all_ints(&ss);
    if (ints) {
        for (size_t i = 0; i < ss.n; i++)
            labels[i] = (int32_t)strtol(ss.s[i].label, NULL, 10);
    } else {
        for (size_t i = 0; i < ss.n; i++)
            names[i] = ss.s[i].label;
        qsort(names, ss.n, sizeof *names, cmp_str);
        for (size_t i = 0; i < ss.n; i++)
            if (nclasses == 0 || strcmp(names[nclasses - 1], names[i]))
                names[nclasses++] = names[i];
        for (size_t i = 0; i < ss.n; i++) {
            char **f = bsearch(&ss.s[i].label, names, nclasses, sizeof *names, cmp_str);
            labels[i] = (int32_t)(f - names);
        }
    }
    /* the first tile fixes the crop size */
    int size = 0;
    if (embed_tile(&cfg, ss.s[0].path, &size, NULL, &err))
        cli_fail("%s", err.msg);
    int B = (int)(bs / 2), C = cfg.model.in_chans, D = cfg.model.embed_dim * (avgpool ? 2 : 1);
    batch_shape shape = {.B = B, .G = 2, .L = 0, .C = C, .H = size, .h = 0};
    dino_trainer *t = run_trainer_new(be, &cfg, &shape, &err);
    if (!t)
        cli_fail("embed: %s", err.msg);
    if (dino_trainer_load(t, role, ck, dino_role_prefix(role), &err))
        cli_fail("%s: %s", ckpt, err.msg);
    msg_free(ck);
    views v;
    if (views_init(&v, be, &shape, &err))
        cli_fail("%s", err.msg);
    msg *fm = msg_new("features");
    tensor *ft = fm ? msg_add_tensor(fm, "features", DT_F4, 2, (int64_t[]){(int64_t)ss.n, D}) : NULL;
    if (!ft)
        cli_fail("out of memory for %zu x %d features", ss.n, D);
    float *feat = ft->data;
    size_t img = (size_t)C * size * size;
    float *tile = malloc(img * sizeof *tile), *fbuf = malloc((size_t)2 * B * D * sizeof *fbuf);
    if (!tile || !fbuf)
        cli_fail("out of memory");
    for (size_t first = 0; first < ss.n; first += 2 * (size_t)B) {
        for (int k = 0; k < 2 * B; k++) {
            size_t i = first + k;
            if (i < ss.n) {
                if (embed_tile(&cfg, ss.s[i].path, &size, tile, &err))
                    cli_fail("%s", err.msg);
            } else {
                memset(tile, 0, img * sizeof *tile);
            }
            if (be->upload(be, v.dev[k / B] + (size_t)(k % B) * img, tile, img, &err))
                cli_fail("%s", err.msg);
        }
        if ((avgpool ? dino_trainer_features_avgpool : dino_trainer_features)(t, role, v.dev, fbuf,
                                                                               &err))
            cli_fail("embed: %s", err.msg);
        size_t rows = ss.n - first < 2 * (size_t)B ? ss.n - first : 2 * (size_t)B;
        memcpy(feat + first * D, fbuf, rows * D * sizeof *feat);
    }
    if (!msg_add_tensor_copy(fm, "labels", DT_I4, 1, (int64_t[]){(int64_t)ss.n}, labels))
        cli_fail("out of memory");
    const char **files = malloc(ss.n * sizeof *files);
    if (!files)
        cli_fail("out of memory");
    for (size_t i = 0; i < ss.n; i++)
        files[i] = ss.s[i].path;
    value *meta = &fm->meta;
    bool ok = value_set_str(meta, "tool", "dino-step embed") &&
              value_set_str(meta, "version", GEODINO_VERSION) &&
              value_set_str(meta, "checkpoint", ckpt) &&
              value_set_str(meta, "which", role == DINO_TEACHER ? "teacher" : "student") &&
              value_set_int(meta, "size", size) &&
              value_set_str(meta, "pooling", avgpool ? "cls+avgpool" : "cls") &&
              value_set_strs(meta, "files", files, ss.n);
    if (ok && !ints)
        ok = value_set_strs(meta, "classes", (const char *const *)names, nclasses) != NULL;
    if (!ok)
        cli_fail("out of memory");
    if (msg_write_file(out, &fm, 1, &err))
        cli_fail("%s", err.msg);
    msg_free(fm);
    free(files), free(tile), free(fbuf), free(labels), free(names);
    for (size_t i = 0; i < ss.n; i++)
        free(ss.s[i].path), free(ss.s[i].label);
    free(ss.s);
    views_free(&v);
    dino_trainer_free(t);
    gd_backend_close(be);
    run_config_free(&cfg);
    return 0;
}


/* ======================================================================
 * send / control: clients of serve
 * ====================================================================== */

static void json_value(FILE *f, const value *v)
{
    switch (v->type) {
    case V_NIL: fputs("null", f); break;
    case V_BOOL: fputs(v->u.b ? "true" : "false", f); break;
    case V_INT: fprintf(f, "%lld", (long long)v->u.i); break;
    case V_FLOAT: json_write_number(f, v->u.f); break;
    case V_STR: json_write_string(f, v->u.s); break;
    case V_ARRAY:
    case V_MAP:
        fputc(v->type == V_MAP ? '{' : '[', f);
        for (size_t i = 0; i < v->u.c.n; i++) {
            fputs(i ? ", " : "", f);
            if (v->type == V_MAP) {
                json_write_string(f, v->u.c.keys[i]);
                fputs(": ", f);
            }
            json_value(f, &v->u.c.items[i]);
        }
        fputc(v->type == V_MAP ? '}' : ']', f);
        break;
    }
}

static int connect_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        cli_usage("--socket: '%s' is too long", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        cli_fail("%s: %s", path, strerror(errno));
    return fd;
}

/* Prints every reply as a JSON line; returns how many said ok false. */
static int print_replies(int fd, const char *path)
{
    gd_err err;
    msg_reader *rd = msg_reader_from_fd(fd, path, &err);
    if (!rd)
        cli_fail("%s", err.msg);
    msg_reader_set_max_bytes(rd, 16 << 20);
    int bad = 0;
    msg *m;
    int rc;
    while ((rc = msg_reader_next(rd, &m, &err)) == 1) {
        json_value(stdout, &m->meta);
        putchar('\n');
        bad += !value_bool(&m->meta, "ok", false);
        msg_free(m);
    }
    fflush(stdout);
    msg_reader_close(rd);
    if (rc < 0 && !bad) /* after an error reply the server may reset the connection */
        cli_fail("%s", err.msg);
    return bad;
}

typedef struct pump {
    int in, out;
    int error;
} pump;

/* Copies standard input or a file to the socket, then half-closes it. */
static void *pump_thread(void *arg)
{
    pump *p = arg;
    char buf[1 << 16];
    for (;;) {
        ssize_t n = read(p->in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            p->error = n < 0 ? errno : 0;
            break;
        }
        if (write_all(p->out, buf, (size_t)n) < 0) {
            p->error = errno;
            break;
        }
    }
    shutdown(p->out, SHUT_WR);
    return NULL;
}

static int cmd_client(int argc, char **argv, bool control)
{
    enum { C_SOCKET = 500, C_VERSION };
    static const struct option longs[] = {{"socket", 1, 0, C_SOCKET}, {"help", 0, 0, 'h'},
                                          {"version", 0, 0, C_VERSION}, {0, 0, 0, 0}};
    const char *path = NULL;
    int o;
    while ((o = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
        switch (o) {
        case C_SOCKET: path = optarg; break;
        case 'h':
            printf(control ? "Usage: dino-step control --socket PATH save|stats|stop\n"
                             "Sends one control message to a dino-step serve and prints its reply\n"
                             "(meta) as a JSON line.  Exit 1 when the reply says ok false.\n"
                           : "Usage: dino-step send --socket PATH [FILE]\n"
                             "Sends the messages of FILE (default '-', standard input) to a dino-step\n"
                             "serve, e.g. multicrop ... | dino-step send --socket PATH, and prints the\n"
                             "server's error replies as JSON lines.  Exit 1 on an error reply.\n");
            exit(0);
        case C_VERSION: cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (!path)
        cli_usage("--socket PATH is required");
    int fd;
    if (control) {
        if (optind + 1 != argc)
            cli_usage("control: one command (save, stats, stop)");
        msg *m = msg_new("control");
        gd_err err;
        if (!m || !value_set_str(&m->meta, "command", argv[optind]))
            cli_fail("out of memory");
        fd = connect_socket(path);
        signal(SIGPIPE, SIG_IGN);
        if (msg_write_fd(fd, m, &err) < 0)
            cli_fail("%s: %s", path, err.msg);
        msg_free(m);
        shutdown(fd, SHUT_WR);
        int bad = print_replies(fd, path);
        close(fd);
        return bad ? 1 : 0;
    }
    const char *in = optind < argc ? argv[optind++] : "-";
    if (optind < argc)
        cli_usage("send: unexpected argument '%s'", argv[optind]);
    int ifd = strcmp(in, "-") ? open(in, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
    if (ifd < 0)
        cli_fail("%s: %s", in, strerror(errno));
    fd = connect_socket(path);
    signal(SIGPIPE, SIG_IGN);
    static pump p;
    p = (pump){.in = ifd, .out = fd};
    pthread_t th;
    if (pthread_create(&th, NULL, pump_thread, &p))
        cli_fail("cannot start a thread");
    int bad = print_replies(fd, path);
    pthread_join(th, NULL);
    close(fd);
    if (ifd != STDIN_FILENO)
        close(ifd);
    if (p.error && !bad)
        cli_fail("%s: %s", p.error == EPIPE || p.error == ECONNRESET ? path : in,
                 strerror(p.error));
    return bad ? 1 : 0;
}

/* ======================================================================
 * main
 * ====================================================================== */

static void usage(void)
{
    printf("Usage: dino-step COMMAND [OPTION]...\n"
           "DINO self-supervised training of a ViT on multispectral crops.\n\n"
           "  init    a fresh checkpoint holding the whole configuration\n"
           "  train   train from `batch` messages on standard input, a file or a FIFO\n"
           "  serve   train from batches sent to a Unix-domain socket by several producers\n"
           "  embed   backbone features of whole tiles, for knn-eval\n"
           "  send    forward batches from standard input or a file to a serve socket\n"
           "  control ask a serve for save, stats or stop\n\n"
           "'dino-step COMMAND --help' lists a command's options.  Exit status: 0 ok,\n"
           "1 runtime error, 2 usage error.\n");
}

int main(int argc, char **argv)
{
    cli_init("dino-step");
    if (argc < 2)
        cli_usage("a command is required (init, train, serve, embed)");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        usage();
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        cli_print_version();
        return 0;
    }
    argv[1] = argv[0];
    if (!strcmp(cmd, "init"))
        return cmd_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "train"))
        return cmd_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "embed"))
        return cmd_embed(argc - 1, argv + 1);
    if (!strcmp(cmd, "send"))
        return cmd_client(argc - 1, argv + 1, false);
    if (!strcmp(cmd, "control"))
        return cmd_client(argc - 1, argv + 1, true);
    cli_usage("unknown command '%s' (init, train, serve, embed, send, control)", cmd);
}
