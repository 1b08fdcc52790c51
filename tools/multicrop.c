/* multicrop: DINO multi-crop views of multispectral samples, streamed as
 * `batch` messages.  Argument parsing, I/O and orchestration only; the
 * augmentation is libcommon/multicrop.c. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "augment.h"
#include "cli.h"
#include "io.h"
#include "msg.h"
#include "multicrop.h"
#include "picture.h"
#include "raster.h"

static const char usage_text[] =
    "Usage: multicrop --stats STATS.mpt [options] SAMPLE...\n"
    "DINO multi-crop augmentation of multispectral samples, written as `batch`\n"
    "messages (tensors global [B,G,C,H,W], local [B,L,C,h,w]) to stdout or -o.\n"
    "Samples: TIFF files, comma-separated band sets, or directories; also\n"
    "--list FILE or lines on stdin.\n"
    "\n"
    "Input and output:\n"
    "  --stats FILE              stats message (tif-stats -o) for normalization (required)\n"
    "  --list FILE               read sample names from FILE ('-' for stdin)\n"
    "  --bands SPEC              bands to read (\"4,3,2\" or names), as the stats were made\n"
    "  --scale S                 divide values by S (default: the stats message's scale)\n"
    "  -o, --output FILE         write to FILE atomically (default: stdout)\n"
    "  --dtype f32|f16|bf16      output type (default f32)\n"
    "  --batch-size B            samples per message (default 64)\n"
    "  --drop-last               leave out a last, incomplete batch of an epoch\n"
    "  --epochs N                passes over the data; 0 = forever (default 1)\n"
    "  --rank R --world W        this process's share: 1/W of every epoch (default 0 1)\n"
    "  --seed N                  seed of shuffling and augmentation (default 0)\n"
    "  --threads N               worker threads (default: all cores); output is identical\n"
    "  --skip-bad                warn about unreadable samples and go on\n"
    "  --preview FILE.png        contact sheet of the views of the first samples\n"
    "  --preview-samples N       samples on the sheet (default 4)\n"
    "  --rgb-bands R,G,B         1-based bands of the sheet (default 3,2,1)\n"
    "  --quiet, --progress       progress on stderr: never / always (default: on a terminal)\n"
    "\n"
    "Views (--recipe sets them all; any later flag overrides):\n"
    "  --recipe dino|s2          dino: DINO's ImageNet defaults; s2: 120x120 Sentinel-2\n"
    "  --global-crops-number G   (2)        --local-crops-number L   (dino 8, s2 6)\n"
    "  --global-size N           (224, s2 120)   --local-size N     (96, s2 56)\n"
    "  --global-crops-scale A B  (0.4 1)    --local-crops-scale A B  (0.05 0.4)\n"
    "  --aspect-ratio A B        (0.75 1.3333)\n"
    "  --flip-prob P             horizontal flip (0.5)\n"
    "  --ssr-prob P              shift-scale-rotate (dino 0, s2 0.5)\n"
    "  --ssr-shift F --ssr-scale F --ssr-rotate DEG   limits (0.0625 0.1 45)\n"
    "  --jitter-prob P           brightness/contrast jitter (0.8)\n"
    "  --brightness F --contrast F   jitter strengths (0.4 0.4)\n"
    "  --jitter-bands each|all   a factor pair per band, or one for all bands (each)\n"
    "  --collapse-prob G1 G2 L   channel collapse (dino 0.2 0.2 0.2, s2 1 0.2 0.2)\n"
    "  --blur-prob G1 G2 L       Gaussian blur (1 0.1 0.5)\n"
    "  --blur-sigma A B          blur sigma range (0.1 2)\n"
    "  --solarize-prob G1 G2 L   solarization (0 0.2 0)\n"
    "  --solarize-threshold T    in scaled reflectance (0.5)\n"
    "  --interp bilinear|bicubic resampling of the crops (bilinear)\n"
    "\n"
    "  -h, --help                this text\n"
    "  --version                 version\n";

/* ---- options ------------------------------------------------------------ */

typedef struct opts {
    mc_config cfg;
    const char *recipe, *stats, *list, *bands, *output, *preview, *rgb;
    double scale;                 /* 0: from the stats message */
    long batch, epochs, rank, world, threads, preview_n;
    uint64_t seed;
    dtype dt;
    bool skip_bad, drop_last, quiet, progress;
    char **inputs;
    size_t ninputs;
} opts;

enum {
    O_STATS, O_LIST, O_BANDS, O_SCALE, O_OUTPUT, O_DTYPE, O_BATCH, O_DROP, O_EPOCHS, O_RANK,
    O_WORLD, O_SEED, O_THREADS, O_SKIP, O_PREVIEW, O_PREVIEW_N, O_RGB, O_QUIET, O_PROGRESS,
    O_RECIPE, O_GN, O_GSIZE, O_GSCALE, O_LN, O_LSIZE, O_LSCALE, O_RATIO, O_FLIP, O_SSR,
    O_SSR_SHIFT, O_SSR_SCALE, O_SSR_ROTATE, O_JITTER, O_BRIGHT, O_CONTRAST, O_JITTER_BANDS,
    O_COLLAPSE, O_BLUR, O_SIGMA, O_SOLAR, O_SOLAR_T, O_INTERP, O_HELP, O_VERSION
};

typedef struct optdef {
    const char *name;
    int id, nargs;
} optdef;

static const optdef optdefs[] = {
    {"stats", O_STATS, 1}, {"list", O_LIST, 1}, {"bands", O_BANDS, 1}, {"scale", O_SCALE, 1},
    {"output", O_OUTPUT, 1}, {"dtype", O_DTYPE, 1}, {"batch-size", O_BATCH, 1},
    {"drop-last", O_DROP, 0}, {"epochs", O_EPOCHS, 1}, {"rank", O_RANK, 1},
    {"world", O_WORLD, 1}, {"seed", O_SEED, 1}, {"threads", O_THREADS, 1},
    {"skip-bad", O_SKIP, 0}, {"preview", O_PREVIEW, 1}, {"preview-samples", O_PREVIEW_N, 1},
    {"rgb-bands", O_RGB, 1}, {"quiet", O_QUIET, 0}, {"progress", O_PROGRESS, 0},
    {"recipe", O_RECIPE, 1}, {"global-crops-number", O_GN, 1}, {"global-size", O_GSIZE, 1},
    {"global-crops-scale", O_GSCALE, 2}, {"local-crops-number", O_LN, 1},
    {"local-size", O_LSIZE, 1}, {"local-crops-scale", O_LSCALE, 2},
    {"aspect-ratio", O_RATIO, 2}, {"flip-prob", O_FLIP, 1}, {"ssr-prob", O_SSR, 1},
    {"ssr-shift", O_SSR_SHIFT, 1}, {"ssr-scale", O_SSR_SCALE, 1},
    {"ssr-rotate", O_SSR_ROTATE, 1}, {"jitter-prob", O_JITTER, 1},
    {"brightness", O_BRIGHT, 1}, {"contrast", O_CONTRAST, 1},
    {"jitter-bands", O_JITTER_BANDS, 1},
    {"collapse-prob", O_COLLAPSE, 3}, {"blur-prob", O_BLUR, 3}, {"blur-sigma", O_SIGMA, 2},
    {"solarize-prob", O_SOLAR, 3}, {"solarize-threshold", O_SOLAR_T, 1},
    {"interp", O_INTERP, 1}, {"help", O_HELP, 0}, {"version", O_VERSION, 0},
};

static const optdef *find_opt(const char *name, size_t len)
{
    for (size_t k = 0; k < sizeof optdefs / sizeof *optdefs; k++)
        if (strlen(optdefs[k].name) == len && strncmp(optdefs[k].name, name, len) == 0)
            return &optdefs[k];
    return NULL;
}

/* The n values of an option: "A,B" in one word, or n words. */
static void take_values(const char *opt, int n, int argc, char **argv, int *i,
                        const char *inline_val, const char **vals, char *buf, size_t bufsz)
{
    const char *first = inline_val;
    if (!first) {
        if (*i + 1 >= argc)
            cli_usage("--%s needs %d value%s", opt, n, n > 1 ? "s" : "");
        first = argv[++*i];
    }
    if (n == 1 || !strchr(first, ',')) {
        vals[0] = first;
        for (int k = 1; k < n; k++) {
            if (inline_val || *i + 1 >= argc)
                cli_usage("--%s needs %d values", opt, n);
            vals[k] = argv[++*i];
        }
        return;
    }
    snprintf(buf, bufsz, "%s", first);
    char *save = NULL, *tok = strtok_r(buf, ",", &save);
    for (int k = 0; k < n; k++, tok = strtok_r(NULL, ",", &save)) {
        if (!tok)
            cli_usage("--%s needs %d values", opt, n);
        vals[k] = tok;
    }
    if (tok)
        cli_usage("--%s takes %d values", opt, n);
}

static void set_pair(const char *o, const char **v, double *dst, double lo, double hi)
{
    dst[0] = cli_double(o, v[0], lo, hi);
    dst[1] = cli_double(o, v[1], lo, hi);
    if (dst[0] > dst[1])
        cli_usage("%s: %g > %g", o, dst[0], dst[1]);
}

static void set_probs(const char *o, const char **v, double *dst)
{
    for (int k = 0; k < MC_KINDS; k++)
        dst[k] = cli_double(o, v[k], 0, 1);
}

static void apply_view_opt(opts *o, int id, const char *on, const char **v)
{
    mc_config *c = &o->cfg;
    switch (id) {
    case O_GN: c->n_global = (int)cli_long(on, v[0], 1, 64); break;
    case O_GSIZE: c->global_size = (int)cli_long(on, v[0], 1, 4096); break;
    case O_GSCALE: set_pair(on, v, c->global_scale, 1e-6, 1); break;
    case O_LN: c->n_local = (int)cli_long(on, v[0], 0, 64); break;
    case O_LSIZE: c->local_size = (int)cli_long(on, v[0], 1, 4096); break;
    case O_LSCALE: set_pair(on, v, c->local_scale, 1e-6, 1); break;
    case O_RATIO: set_pair(on, v, c->ratio, 1e-3, 1e3); break;
    case O_FLIP: c->flip_p = cli_double(on, v[0], 0, 1); break;
    case O_SSR: c->ssr_p = cli_double(on, v[0], 0, 1); break;
    case O_SSR_SHIFT: c->ssr_shift = cli_double(on, v[0], 0, 1); break;
    case O_SSR_SCALE: c->ssr_scale = cli_double(on, v[0], 0, 0.9); break;
    case O_SSR_ROTATE: c->ssr_rotate = cli_double(on, v[0], 0, 180); break;
    case O_JITTER: c->jitter_p = cli_double(on, v[0], 0, 1); break;
    case O_BRIGHT: c->brightness = cli_double(on, v[0], 0, 0.99); break;
    case O_CONTRAST: c->contrast = cli_double(on, v[0], 0, 0.99); break;
    case O_JITTER_BANDS:
        if (strcmp(v[0], "each") != 0 && strcmp(v[0], "all") != 0)
            cli_usage("--jitter-bands: '%s' is not each or all", v[0]);
        c->jitter_shared = strcmp(v[0], "all") == 0;
        break;
    case O_COLLAPSE: set_probs(on, v, c->collapse_p); break;
    case O_BLUR: set_probs(on, v, c->blur_p); break;
    case O_SIGMA: set_pair(on, v, c->blur_sigma, 0.01, 5); break;
    case O_SOLAR: set_probs(on, v, c->solarize_p); break;
    case O_SOLAR_T: c->solarize_threshold = cli_double(on, v[0], -1e9, 1e9); break;
    case O_INTERP:
        if (strcmp(v[0], "bilinear") != 0 && strcmp(v[0], "bicubic") != 0)
            cli_usage("--interp: '%s' is not bilinear or bicubic", v[0]);
        c->bicubic = strcmp(v[0], "bicubic") == 0;
        break;
    }
}

static void apply_opt(opts *o, int id, const char *on, const char **v)
{
    switch (id) {
    case O_STATS: o->stats = v[0]; break;
    case O_LIST: o->list = v[0]; break;
    case O_BANDS: o->bands = v[0]; break;
    case O_SCALE: o->scale = cli_double(on, v[0], 1e-12, 1e12); break;
    case O_OUTPUT: o->output = v[0]; break;
    case O_DTYPE:
        if (strcmp(v[0], "f32") == 0) o->dt = DT_F4;
        else if (strcmp(v[0], "f16") == 0) o->dt = DT_F2;
        else if (strcmp(v[0], "bf16") == 0) o->dt = DT_BF16;
        else cli_usage("--dtype: '%s' is not f32, f16 or bf16", v[0]);
        break;
    case O_BATCH: o->batch = cli_long(on, v[0], 1, 65536); break;
    case O_DROP: o->drop_last = true; break;
    case O_EPOCHS: o->epochs = cli_long(on, v[0], 0, 1L << 40); break;
    case O_RANK: o->rank = cli_long(on, v[0], 0, 1 << 20); break;
    case O_WORLD: o->world = cli_long(on, v[0], 1, 1 << 20); break;
    case O_SEED: o->seed = (uint64_t)cli_long(on, v[0], 0, __LONG_MAX__); break;
    case O_THREADS: o->threads = cli_long(on, v[0], 1, 1024); break;
    case O_SKIP: o->skip_bad = true; break;
    case O_PREVIEW: o->preview = v[0]; break;
    case O_PREVIEW_N: o->preview_n = cli_long(on, v[0], 1, 64); break;
    case O_RGB: o->rgb = v[0]; break;
    case O_QUIET: o->quiet = true; break;
    case O_PROGRESS: o->progress = true; break;
    case O_RECIPE: break; /* applied first, in parse_args */
    case O_HELP: fputs(usage_text, stdout); exit(0);
    case O_VERSION: cli_print_version(); exit(0);
    default: apply_view_opt(o, id, on, v);
    }
}

/* The recipe is the base every other flag overrides, wherever it appears. */
static const char *find_recipe(int argc, char **argv)
{
    const char *r = "dino";
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--recipe") == 0 && i + 1 < argc)
            r = argv[++i];
        else if (strncmp(argv[i], "--recipe=", 9) == 0)
            r = argv[i] + 9;
    }
    return r;
}

static void parse_args(opts *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->batch = 64, o->epochs = 1, o->world = 1, o->preview_n = 4, o->dt = DT_F4;
    o->recipe = find_recipe(argc, argv);
    if (mc_recipe(&o->cfg, o->recipe) < 0)
        cli_usage("--recipe: '%s' is not dino or s2", o->recipe);
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int npos = 0;
    bool only_pos = false;
    char buf[256], oname[64];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) {
            pos[npos++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        const char *name = a + 2, *eq = NULL;
        if (strcmp(a, "-o") == 0)
            name = "output";
        else if (strcmp(a, "-h") == 0)
            name = "help";
        else if (a[1] != '-')
            cli_usage("unknown option '%s'", a);
        eq = strchr(name, '=');
        const optdef *d = find_opt(name, eq ? (size_t)(eq - name) : strlen(name));
        if (!d)
            cli_usage("unknown option '%s'", a);
        if (d->nargs == 0 && eq)
            cli_usage("--%s takes no value", d->name);
        const char *vals[3] = {0};
        if (d->nargs)
            take_values(d->name, d->nargs, argc, argv, &i, eq ? eq + 1 : NULL, vals, buf,
                        sizeof buf);
        snprintf(oname, sizeof oname, "--%s", d->name);
        apply_opt(o, d->id, oname, vals);
    }
    if (!o->stats)
        cli_usage("--stats is required");
    struct stat sb;
    /* the PNG is written atomically (rename): never over a device or pipe */
    if (o->preview && stat(o->preview, &sb) == 0 && !S_ISREG(sb.st_mode))
        cli_usage("--preview %s: not a regular file", o->preview);
    if (o->rank >= o->world)
        cli_usage("--rank %ld: must be below --world %ld", o->rank, o->world);
    gd_err err;
    if (mc_config_check(&o->cfg, &err) < 0)
        cli_usage("%s", err.msg);
    o->ninputs = cli_inputs(npos, pos, 0, o->list, &o->inputs);
    free(pos);
    if (o->ninputs == 0)
        cli_usage("no input samples");
}

/* ---- the stats message -------------------------------------------------- */

typedef struct stats {
    int C;
    float *mean, *std;            /* in the units of x / scale */
    double scale;
    value bands;                  /* band names (array) or nil */
} stats;

/* Reads mean/std, and converts them from the stats' scale to ours:
 * x / s_ours has mean m * s_stats / s_ours. */
static int load_stats(const char *path, double scale, stats *st, gd_err *err)
{
    memset(st, 0, sizeof *st);
    msg *m = msg_read_one(path, "stats", err);
    if (!m)
        return -1;
    const tensor *mean = msg_require_tensor(m, "mean", DT_F8, 1, err);
    const tensor *sd = mean ? msg_require_tensor(m, "std", DT_F8, 1, err) : NULL;
    int rc = -1;
    if (!sd)
        goto done;
    if (sd->count != mean->count || mean->count < 1 || mean->count > 4096) {
        gd_errf(err, "mean has %zu values and std %zu (1..4096 bands, the same)", mean->count,
                sd->count);
        goto done;
    }
    double s_stats = value_float(&m->meta, "scale", 1.0);
    if (!(s_stats > 0 && isfinite(s_stats)))
        s_stats = 1.0;
    st->scale = scale > 0 ? scale : s_stats;
    st->C = (int)mean->count;
    st->mean = malloc(st->C * sizeof *st->mean);
    st->std = malloc(st->C * sizeof *st->std);
    if (!st->mean || !st->std) {
        gd_errf(err, "out of memory");
        goto done;
    }
    const double *mv = mean->data, *sv = sd->data;
    for (int c = 0; c < st->C; c++) {
        /* checked in float, the type they are used in */
        st->mean[c] = (float)(mv[c] * s_stats / st->scale);
        st->std[c] = (float)(sv[c] * s_stats / st->scale);
        if (!isfinite(st->mean[c]) || !(st->std[c] > 0) || !isfinite(st->std[c])) {
            gd_errf(err, "band %d: mean %g, std %g: cannot normalize", c + 1, mv[c], sv[c]);
            goto done;
        }
    }
    const value *names = value_get(&m->meta, "bands");
    if (names && names->type == V_ARRAY && value_copy(&st->bands, names) < 0) {
        gd_errf(err, "out of memory");
        goto done;
    }
    rc = 0;
done:
    msg_free(m);
    if (rc < 0)
        gd_err_prefix(err, "%s", path);
    return rc;
}

static void free_stats(stats *st)
{
    free(st->mean);
    free(st->std);
    value_free(&st->bands);
}

/* ---- workers ------------------------------------------------------------ */

typedef struct worker {
    mc_scratch scratch;
    float *views;                 /* one sample's views in f32: globals then locals */
} worker;

typedef struct run {
    const opts *o;
    const stats *st;
    size_t gview, lview;          /* floats per sample: all globals, all locals */
    worker *workers;
    int nworkers;
} run;

static int load_sample(const run *R, const char *path, raster *ras, gd_err *err)
{
    raster_opts ro = {.bands = R->o->bands};
    if (raster_read(path, &ro, ras, err) < 0)
        return -1;
    if (ras->bands != R->st->C) {
        gd_errf(err, "%s: %d bands, the stats message has %d", path, ras->bands, R->st->C);
        raster_free(ras);
        return -1;
    }
    mc_prepare(ras->data, ras->valid, ras->bands, (size_t)ras->height * ras->width,
               R->st->scale, R->st->mean);
    return 0;
}

/* Writes n floats as f16 or bf16 at element offset `at` of t. */
static void store(tensor *t, size_t at, const float *x, size_t n)
{
    uint16_t *d = (uint16_t *)t->data + at;
    if (t->dtype == DT_F2)
        for (size_t k = 0; k < n; k++)
            d[k] = f32_to_f16(x[k]);
    else
        for (size_t k = 0; k < n; k++)
            d[k] = f32_to_bf16(x[k]);
}

/* Sample `file` of epoch e into batch slot `slot`. */
static int make_one(const run *R, worker *w, size_t file, uint64_t epoch, tensor *g, tensor *l,
                    size_t slot, gd_err *err)
{
    raster ras;
    if (load_sample(R, R->o->inputs[file], &ras, err) < 0)
        return -1;
    mc_source src = {ras.data, ras.bands, ras.height, ras.width, R->st->mean, R->st->std};
    if (g->dtype == DT_F4) { /* straight into the batch */
        mc_make_sample(&R->o->cfg, &src, R->o->seed, epoch, file, &w->scratch,
                       (float *)g->data + slot * R->gview, (float *)l->data + slot * R->lview);
    } else {
        mc_make_sample(&R->o->cfg, &src, R->o->seed, epoch, file, &w->scratch, w->views,
                       w->views + R->gview);
        store(g, slot * R->gview, w->views, R->gview);
        store(l, slot * R->lview, w->views + R->gview, R->lview);
    }
    raster_free(&ras);
    return 0;
}

static void init_workers(run *R, int n)
{
    gd_err err;
    R->nworkers = n;
    R->workers = calloc((size_t)n, sizeof *R->workers);
    if (!R->workers)
        cli_fail("out of memory");
    for (int k = 0; k < n; k++) {
        worker *w = &R->workers[k];
        if (mc_scratch_init(&w->scratch, &R->o->cfg, R->st->C, &err) < 0)
            cli_fail("%s", err.msg);
        w->views = malloc((R->gview + R->lview) * sizeof *w->views);
        if (!w->views)
            cli_fail("out of memory");
    }
}

static void free_workers(run *R)
{
    for (int k = 0; k < R->nworkers; k++) {
        mc_scratch_free(&R->workers[k].scratch);
        free(R->workers[k].views);
    }
    free(R->workers);
}

/* ---- batches ------------------------------------------------------------ */

typedef struct stream {
    run *R;
    msg *m;                       /* reused: tensors sized for a full batch */
    tensor *g, *l;
    size_t *cand, *files;         /* per slot: candidate file, file in the batch */
    int *ok;
    gd_err *errs;
    bool *bad;                    /* files found unreadable (with --skip-bad) */
    size_t nbad;
    msg_file *out;                /* -o FILE (a regular file), written atomically */
    int fd;                       /* otherwise: stdout, or a device or pipe named by -o */
    bool previewed, progress;
    uint64_t samples;
    struct timespec t0;
} stream;

static void set_rows(tensor *t, size_t rows)
{
    /* the writer sends shape and nbytes; a short last batch keeps the buffer */
    size_t per = t->shape[0] ? t->count / (size_t)t->shape[0] : 0;
    t->shape[0] = (int64_t)rows;
    t->count = rows * per;
    t->nbytes = t->count * dtype_size(t->dtype);
}

static void move_slot(tensor *t, size_t from, size_t to, size_t per)
{
    size_t bytes = per * dtype_size(t->dtype);
    memmove((char *)t->data + to * bytes, (char *)t->data + from * bytes, bytes);
}

/* Makes the samples of cand[0..k) in parallel into slots first.. */
static void make_group(stream *S, size_t k, size_t first, uint64_t epoch)
{
    run *R = S->R;
#pragma omp parallel for schedule(dynamic, 1) num_threads(R->nworkers)
    for (size_t j = 0; j < k; j++) {
        worker *w = &R->workers[omp_get_thread_num()];
        S->ok[j] = make_one(R, w, S->cand[j], epoch, S->g, S->l, first + j, &S->errs[j]) == 0;
    }
}

/* Fills up to B slots from share[*cursor..]; returns how many, -1 on a
 * bad sample without --skip-bad (err says which). */
static long fill_batch(stream *S, const size_t *share, size_t nshare, size_t *cursor,
                       uint64_t epoch, gd_err *err)
{
    const opts *o = S->R->o;
    size_t B = (size_t)o->batch, filled = 0;
    while (filled < B && *cursor < nshare) {
        size_t k = 0;
        while (filled + k < B && *cursor < nshare) {
            size_t f = share[(*cursor)++];
            if (!S->bad[f])
                S->cand[k++] = f;
        }
        make_group(S, k, filled, epoch);
        size_t dst = filled;
        for (size_t j = 0; j < k; j++) {
            if (S->ok[j]) {
                if (dst != filled + j) {
                    move_slot(S->g, filled + j, dst, S->R->gview);
                    move_slot(S->l, filled + j, dst, S->R->lview);
                }
                S->files[dst++] = S->cand[j];
                continue;
            }
            if (!o->skip_bad) {
                *err = S->errs[j];
                return -1;
            }
            cli_warn("%s (skipped)", S->errs[j].msg);
            S->bad[S->cand[j]] = true;
            S->nbad++;
        }
        filled = dst;
    }
    return (long)filled;
}

static void set_meta(stream *S, uint64_t epoch, uint64_t index, size_t n)
{
    const opts *o = S->R->o;
    value *meta = &S->m->meta;
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names)
        cli_fail("out of memory");
    for (size_t k = 0; k < n; k++)
        names[k] = o->inputs[S->files[k]];
    bool ok = value_set_int(meta, "epoch", (int64_t)epoch) && value_set_int(meta, "index", (int64_t)index) &&
              value_set_int(meta, "seed", (int64_t)o->seed) &&
              value_set_strs(meta, "files", names, n);
    free(names);
    if (!ok)
        cli_fail("out of memory");
}

static void init_meta(stream *S)
{
    const opts *o = S->R->o;
    value *meta = &S->m->meta;
    value b;
    if (value_copy(&b, &S->R->st->bands) < 0)
        cli_fail("out of memory");
    bool ok = value_set_str(meta, "tool", "multicrop") &&
              value_set_str(meta, "version", GEODINO_VERSION) &&
              value_set_str(meta, "recipe", o->recipe) && value_set_int(meta, "rank", o->rank) &&
              value_set_int(meta, "world", o->world) &&
              value_set_float(meta, "scale", S->R->st->scale) && value_set(meta, "bands", b);
    if (!ok)
        cli_fail("out of memory");
}

/* 1 written; 0 the reader has gone (EPIPE): stop quietly. */
static int write_batch(stream *S)
{
    gd_err err;
    if (S->out) {
        if (msg_file_put(S->out, S->m, &err) < 0)
            cli_fail("%s", err.msg);
        return 1;
    }
    errno = 0;
    if (msg_write_fd(S->fd, S->m, &err) == 0)
        return 1;
    if (errno == EPIPE || strstr(err.msg, strerror(EPIPE)))
        return 0;
    cli_fail("%s: %s", S->fd == STDOUT_FILENO ? "standard output" : S->R->o->output, err.msg);
}

/* ---- preview ------------------------------------------------------------ */

/* The views of `n` samples, one row each (globals then locals, 2-pixel
 * gaps), as a false-colour composite stretched per channel by the 2/98
 * percentiles over every view on the sheet. */
typedef struct sheet {
    int n, V, C, width, height;
    uint8_t *rgb;
} sheet;


/* The band `band` of view v of sample s, as floats into out; returns its size. */
static int view_band(const stream *S, int s, int v, int band, float *out)
{
    const mc_config *c = &S->R->o->cfg;
    int size = mc_view_size(c, v), C = S->R->st->C;
    size_t npix = (size_t)size * size;
    const tensor *t = v < c->n_global ? S->g : S->l;
    size_t per = v < c->n_global ? S->R->gview : S->R->lview;
    int vi = v < c->n_global ? v : v - c->n_global;
    size_t base = (size_t)s * per + ((size_t)vi * C + band) * npix;
    for (size_t p = 0; p < npix; p++)
        out[p] = tensor_f32_at(t, base + p);
    return size;
}

static void sheet_channel(const stream *S, sheet *sh, int ch, int band, float *buf)
{
    const mc_config *c = &S->R->o->cfg;
    size_t total = 0;
    for (int s = 0; s < sh->n; s++)
        for (int v = 0; v < sh->V; v++) {
            int size = view_band(S, s, v, band, buf + total);
            total += (size_t)size * size;
        }
    double lo = percentile_f32(buf, total, 2), hi = percentile_f32(buf, total, 98);
    size_t at = 0;
    for (int s = 0; s < sh->n; s++) {
        int x0 = 2, y0 = 2 + s * (c->global_size + 2);
        for (int v = 0; v < sh->V; v++) {
            int size = mc_view_size(c, v);
            for (int y = 0; y < size; y++)
                stretch_to_u8(buf + at + (size_t)y * size, (size_t)size, lo, hi,
                              sh->rgb + (((size_t)(y0 + y) * sh->width) + x0) * 3 + ch, 3);
            at += (size_t)size * size;
            x0 += size + 2;
        }
    }
}

static void write_preview(const stream *S, size_t nsamples, const int rgb[3])
{
    const mc_config *c = &S->R->o->cfg;
    sheet sh = {.n = (int)nsamples, .V = c->n_global + c->n_local, .C = S->R->st->C};
    sh.width = 2 + c->n_global * (c->global_size + 2) + c->n_local * (c->local_size + 2);
    sh.height = 2 + sh.n * (c->global_size + 2);
    size_t per_sample = (size_t)c->n_global * c->global_size * c->global_size +
                        (size_t)c->n_local * c->local_size * c->local_size;
    sh.rgb = malloc((size_t)sh.width * sh.height * 3);
    float *buf = malloc(per_sample * sh.n * sizeof *buf);
    if (!sh.rgb || !buf)
        cli_fail("out of memory");
    memset(sh.rgb, 48, (size_t)sh.width * sh.height * 3);
    for (int ch = 0; ch < 3; ch++)
        sheet_channel(S, &sh, ch, rgb[ch], buf);
    gd_err err;
    if (png_write_rgb(S->R->o->preview, sh.rgb, sh.width, sh.height, &err) < 0)
        cli_fail("%s", err.msg);
    free(sh.rgb);
    free(buf);
}

/* --rgb-bands: three 1-based band numbers (one band gives grey). */
static void parse_rgb(const opts *o, int C, int rgb[3])
{
    if (!o->rgb) {
        for (int k = 0; k < 3; k++)
            rgb[k] = C >= 3 ? 2 - k : 0;
        return;
    }
    double v[3];
    int n = cli_doubles("--rgb-bands", o->rgb, v, 3, 1, C);
    if (n != 3 && n != 1)
        cli_usage("--rgb-bands: give 3 bands (or 1 for grey)");
    for (int k = 0; k < 3; k++) {
        double b = v[n == 3 ? k : 0];
        if (b != floor(b))
            cli_usage("--rgb-bands: %g is not a band number", b);
        rgb[k] = (int)b - 1;
    }
}

/* ---- the epochs --------------------------------------------------------- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

/* This rank's files of an epoch: a permutation shared by every rank (the
 * stream (seed, epoch, ~0, 0)), cut into W equal strided shares; the
 * N mod W files left over change from epoch to epoch. */
static size_t epoch_share(const opts *o, uint64_t epoch, size_t *perm, size_t *share)
{
    size_t N = o->ninputs;
    for (size_t k = 0; k < N; k++)
        perm[k] = k;
    rng r;
    rng_init(&r, o->seed, epoch, UINT64_MAX, 0);
    for (size_t k = N - 1; k > 0; k--) {
        size_t j = (size_t)rng_below(&r, k + 1), t = perm[k];
        perm[k] = perm[j], perm[j] = t;
    }
    size_t n = N / (size_t)o->world;
    for (size_t k = 0; k < n; k++)
        share[k] = perm[(size_t)o->rank + k * (size_t)o->world];
    return n;
}

/* One epoch; 0 when the reader went away. */
static int run_epoch(stream *S, uint64_t epoch, size_t *perm, size_t *share, const int rgb[3])
{
    const opts *o = S->R->o;
    size_t nshare = epoch_share(o, epoch, perm, share), cursor = 0;
    uint64_t index = 0, good = 0;
    gd_err err;
    for (;;) {
        set_rows(S->g, (size_t)o->batch);
        set_rows(S->l, (size_t)o->batch);
        long n = fill_batch(S, share, nshare, &cursor, epoch, &err);
        if (n < 0)
            cli_fail("%s", err.msg);
        good += (uint64_t)n;
        if (n == 0 || (n < o->batch && o->drop_last))
            break;
        set_rows(S->g, (size_t)n);
        set_rows(S->l, (size_t)n);
        set_meta(S, epoch, index++, (size_t)n);
        if (o->preview && !S->previewed) {
            write_preview(S, (size_t)n < (size_t)o->preview_n ? (size_t)n : (size_t)o->preview_n, rgb);
            S->previewed = true;
        }
        if (!write_batch(S))
            return 0;
        S->samples += (uint64_t)n;
        if (S->progress)
            fprintf(stderr, "\rmulticrop: epoch %llu, %llu samples, %.1f samples/s ",
                    (unsigned long long)epoch, (unsigned long long)S->samples,
                    S->samples / seconds_since(&S->t0));
    }
    if (good == 0)
        cli_fail("epoch %llu: no sample could be read", (unsigned long long)epoch);
    return 1;
}

/* Regular files are replaced atomically; an existing device or pipe
 * (/dev/null, a FIFO) is written in place: renaming a temporary file over
 * /dev/null would replace the device itself. */
static void open_output(stream *S, const char *path)
{
    gd_err err;
    struct stat sb;
    S->fd = STDOUT_FILENO;
    if (!path || strcmp(path, "-") == 0)
        return;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        if (S_ISDIR(sb.st_mode))
            cli_fail("%s: is a directory", path);
        S->fd = open(path, O_WRONLY | O_CLOEXEC);
        if (S->fd < 0)
            cli_fail("%s: %s", path, strerror(errno));
        return;
    }
    if (!(S->out = msg_file_create(path, &err)))
        cli_fail("%s", err.msg);
}

static void open_stream(stream *S, run *R)
{
    const opts *o = R->o;
    const mc_config *c = &o->cfg;
    memset(S, 0, sizeof *S);
    S->R = R;
    size_t B = (size_t)o->batch;
    int64_t gs[5] = {(int64_t)B, c->n_global, R->st->C, c->global_size, c->global_size};
    int64_t ls[5] = {(int64_t)B, c->n_local, R->st->C, c->local_size, c->local_size};
    S->m = msg_new("batch");
    if (!S->m || !(S->g = msg_add_tensor(S->m, "global", o->dt, 5, gs)) ||
        !(S->l = msg_add_tensor(S->m, "local", o->dt, 5, ls)))
        cli_fail("out of memory for a batch of %zu samples", B);
    /* msg_add_tensor may move earlier tensors when it grows the array */
    S->g = (tensor *)msg_get_tensor(S->m, "global");
    S->cand = malloc(B * sizeof *S->cand);
    S->files = malloc(B * sizeof *S->files);
    S->ok = malloc(B * sizeof *S->ok);
    S->errs = malloc(B * sizeof *S->errs);
    S->bad = calloc(o->ninputs, sizeof *S->bad);
    if (!S->cand || !S->files || !S->ok || !S->errs || !S->bad)
        cli_fail("out of memory");
    init_meta(S);
    open_output(S, o->output);
    S->progress = cli_progress_enabled(o->quiet, o->progress);
    clock_gettime(CLOCK_MONOTONIC, &S->t0);
}

static void close_stream(stream *S)
{
    gd_err err;
    if (S->out && msg_file_commit(S->out, &err) < 0)
        cli_fail("%s", err.msg);
    if (S->fd != STDOUT_FILENO && close(S->fd) < 0)
        cli_fail("%s: %s", S->R->o->output, strerror(errno));
    if (S->progress)
        fputc('\n', stderr);
    msg_free(S->m);
    free(S->cand), free(S->files), free(S->ok), free(S->errs), free(S->bad);
}

/* Refuses batches the message reader would refuse. */
static void check_sizes(const opts *o, const run *R)
{
    double bytes = (double)o->batch * (double)(R->gview + R->lview) * dtype_size(o->dt);
    if (bytes > (double)msg_default_max_bytes())
        cli_usage("a batch of %ld samples is %.0f MB, more than a message may hold (%zu MB); "
                  "lower --batch-size", o->batch, bytes / 1e6, msg_default_max_bytes() >> 20);
    size_t share = o->ninputs / (size_t)o->world;
    if (share == 0)
        cli_usage("%zu samples cannot be shared among %ld ranks", o->ninputs, o->world);
    if (o->drop_last && share < (size_t)o->batch)
        cli_usage("--drop-last: this rank's %zu samples never fill a batch of %ld", share,
                  o->batch);
}

int main(int argc, char **argv)
{
    cli_init("multicrop");
    /* a closed stdout shows as EPIPE from write, handled at a message boundary */
    signal(SIGPIPE, SIG_IGN);
    opts o;
    parse_args(&o, argc, argv);
    stats st;
    gd_err err;
    if (load_stats(o.stats, o.scale, &st, &err) < 0)
        cli_fail("%s", err.msg);
    const mc_config *c = &o.cfg;
    run R = {.o = &o, .st = &st};
    R.gview = (size_t)c->n_global * st.C * c->global_size * c->global_size;
    R.lview = (size_t)c->n_local * st.C * c->local_size * c->local_size;
    check_sizes(&o, &R);
    int rgb[3];
    parse_rgb(&o, st.C, rgb);
    long threads = o.threads ? o.threads : sysconf(_SC_NPROCESSORS_ONLN);
    init_workers(&R, threads > 0 ? (int)threads : 1);
    size_t *perm = malloc(o.ninputs * sizeof *perm), *share = malloc(o.ninputs * sizeof *share);
    if (!perm || !share)
        cli_fail("out of memory");
    stream S;
    open_stream(&S, &R);
    for (uint64_t e = 0; o.epochs == 0 || e < (uint64_t)o.epochs; e++)
        if (!run_epoch(&S, e, perm, share, rgb))
            break;
    close_stream(&S);
    if (S.nbad)
        cli_warn("%zu bad sample%s skipped", S.nbad, S.nbad == 1 ? "" : "s");
    free(perm), free(share);
    free_workers(&R);
    free_stats(&st);
    free_lines(o.inputs, o.ninputs);
    return 0;
}
