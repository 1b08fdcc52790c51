/* tif-stats: per-band statistics of GeoTIFFs over many files.
 *
 * Pass 1 reads every file (in parallel) and accumulates count, mean,
 * M2, min and max per band; results are merged in file order, so the
 * output does not depend on --threads.  --hist and --percentiles add
 * passes over the same files (kept in memory when they fit in the cache
 * budget, else read again). */
#include <getopt.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bandstats.h"
#include "cli.h"
#include "msg.h"
#include "parallel.h"
#include "raster.h"

#define MAX_PCTS 16
#define CACHE_BYTES ((size_t)1 << 30)   /* keep decoded files for later passes up to this */

typedef struct {
    char **files;
    size_t nfiles;
    const char *list, *output, *bands;
    double scale;
    int hist_bins;
    double pcts[MAX_PCTS];
    int npcts;
    int threads;
    int have_nodata;
    double nodata;
    int progress;
} options;

typedef struct {
    raster r;            /* kept between passes when cached */
    int cached;
    int bands;
    char **names;        /* borrowed from r, or owned when not cached */
    moments *m;          /* [bands] */
    int has_nodata;
    double nodata;
    gd_err err;
    int failed;
} file_result;

typedef struct {
    const options *o;
    file_result *res;
    atomic_size_t done;
    atomic_size_t cached_bytes;
    int bands;                 /* after pass 1 */
    const moments *total;      /* [bands], after pass 1 */
    histogram *hist;           /* [threads][bands] user histograms */
    histogram *fine;           /* [threads][bands] percentile histograms */
    pct_plan *plans;           /* [threads][bands] */
    const char *pass;
    double t0;                 /* start of the pass, for rate and ETA */
} job;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(void)
{
    printf("Usage: tif-stats [OPTION]... [FILE]...\n"
           "Per-band statistics (count, mean, std, min, max) of GeoTIFFs, over all files.\n"
           "A FILE is a TIFF, a comma-separated band set (a_B02.tif,a_B03.tif) or a\n"
           "directory holding one.  Without FILEs or --list, paths are read from stdin.\n\n"
           "  -l, --list FILE          read paths from FILE, one per line ('-': stdin)\n"
           "  -o, --output FILE        write the stats message (mpt) to FILE ('-': stdout,\n"
           "                           then no JSON is printed)\n"
           "  -b, --bands SPEC         bands to use: 1-based indices or names, '4,3,2'\n"
           "  -s, --scale S            divide values by S first (10000 for Sentinel-2)\n"
           "  -n, --nodata V           treat V as nodata (overrides the files' nodata tag)\n"
           "      --hist N             histogram of N bins over [min, max] per band\n"
           "  -p, --percentiles LIST   exact percentiles, e.g. 2,98\n"
           "  -j, --threads N          files read in parallel (default: all CPUs)\n"
           "  -q, --quiet              no progress\n"
           "      --progress           progress on stderr even when it is not a terminal\n"
           "  -h, --help               this help\n"
           "  -V, --version            version\n\n"
           "Output: JSON on stdout, band names as keys.  The std is the population std,\n"
           "as gdalinfo -stats.  Exit status: 0 ok, 1 runtime error, 2 usage error.\n");
}

static void parse_args(int argc, char **argv, options *o)
{
    static const struct option longs[] = {
        {"list", required_argument, 0, 'l'},    {"output", required_argument, 0, 'o'},
        {"bands", required_argument, 0, 'b'},   {"scale", required_argument, 0, 's'},
        {"nodata", required_argument, 0, 'n'},  {"hist", required_argument, 0, 'H'},
        {"percentiles", required_argument, 0, 'p'}, {"threads", required_argument, 0, 'j'},
        {"quiet", no_argument, 0, 'q'},         {"progress", no_argument, 0, 'P'},
        {"help", no_argument, 0, 'h'},          {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    int quiet = 0, progress = 0, c;
    *o = (options){.scale = 1.0, .threads = 0};
    while ((c = getopt_long(argc, argv, "l:o:b:s:n:p:j:qhV", longs, NULL)) != -1) {
        switch (c) {
        case 'l': o->list = optarg; break;
        case 'o': o->output = optarg; break;
        case 'b': o->bands = optarg; break;
        case 's': o->scale = cli_double("--scale", optarg, 1e-300, 1e300); break;
        case 'n': o->have_nodata = 1; o->nodata = strtod(optarg, NULL);
                  if (strcasecmp(optarg, "nan") != 0)
                      o->nodata = cli_double("--nodata", optarg, -INFINITY, INFINITY);
                  break;
        case 'H': o->hist_bins = (int)cli_long("--hist", optarg, 1, 1 << 20); break;
        case 'p': o->npcts = cli_doubles("--percentiles", optarg, o->pcts, MAX_PCTS, 0, 100); break;
        case 'j': o->threads = (int)cli_long("--threads", optarg, 1, 1024); break;
        case 'q': quiet = 1; break;
        case 'P': progress = 1; break;
        case 'h': usage(); exit(0);
        case 'V': cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    o->progress = cli_progress_enabled(quiet, progress);
    o->nfiles = cli_inputs(argc, argv, optind, o->list, &o->files);
    if (o->nfiles == 0)
        cli_usage("no input files (give FILEs, --list, or paths on stdin)");
}

static void show_progress(job *j)
{
    size_t done = atomic_fetch_add(&j->done, 1) + 1;
    if (!j->o->progress)
        return;
    double dt = now() - j->t0, rate = dt > 0 ? (double)done / dt : 0;
    double eta = rate > 0 ? (double)(j->o->nfiles - done) / rate : 0;
    fprintf(stderr, "\r%s: %s: %zu/%zu files, %.1f files/s, ETA %.0f s   ", cli_tool(), j->pass,
            done, j->o->nfiles, rate, eta);
}

static void end_progress(job *j)
{
    if (j->o->progress)
        fputc('\n', stderr);
    atomic_store(&j->done, 0);
}

/* The raster of file i: from the cache, or read again. */
static int get_raster(job *j, size_t i, raster *tmp, const raster **r, gd_err *err)
{
    file_result *fr = &j->res[i];
    if (fr->cached) {
        *r = &fr->r;
        return 0;
    }
    raster_opts ro = {.bands = j->o->bands, .keep_native = true};
    if (raster_read(j->o->files[i], &ro, tmp, err) < 0)
        return -1;
    if (j->o->have_nodata && raster_set_nodata(tmp, j->o->nodata, err) < 0) {
        raster_free(tmp);
        return gd_err_prefix(err, "%s", j->o->files[i]);
    }
    *r = tmp;
    return 0;
}

static int pass_moments(void *ctx, size_t i, int thread)
{
    job *j = ctx;
    file_result *fr = &j->res[i];
    raster tmp = {0};
    const raster *r;
    if (get_raster(j, i, &tmp, &r, &fr->err) < 0) {
        fr->failed = 1;
        return 1;
    }
    fr->bands = r->bands;
    fr->has_nodata = r->has_nodata;
    fr->nodata = r->nodata;
    fr->m = calloc((size_t)r->bands, sizeof *fr->m);
    fr->names = calloc((size_t)r->bands, sizeof *fr->names);
    if (!fr->m || !fr->names) {
        gd_errf(&fr->err, "%s: out of memory", j->o->files[i]);
        fr->failed = 1;
        raster_free(&tmp);
        return 1;
    }
    for (int b = 0; b < r->bands; b++)
        band_moments(r, b, &fr->m[b]);
    size_t bytes = (size_t)r->bands * r->height * r->width *
                   (sizeof(float) + 1 + raster_type_size(r->type));
    int keep = atomic_fetch_add(&j->cached_bytes, bytes) + bytes <= CACHE_BYTES;
    if (keep) {
        fr->r = tmp;
        fr->cached = 1;
    }
    for (int b = 0; b < r->bands; b++)
        fr->names[b] = strdup(r->band_names[b]);
    if (!keep)
        raster_free(&tmp);
    show_progress(j);
    return 0;
}

static int pass_histograms(void *ctx, size_t i, int thread)
{
    job *j = ctx;
    file_result *fr = &j->res[i];
    raster tmp = {0};
    const raster *r;
    if (get_raster(j, i, &tmp, &r, &fr->err) < 0) {
        fr->failed = 1;
        return 1;
    }
    for (int b = 0; b < j->bands; b++) {
        if (j->hist)
            histogram_add_band(&j->hist[thread * j->bands + b], r, b);
        if (j->fine)
            histogram_add_band(&j->fine[thread * j->bands + b], r, b);
    }
    raster_free(&tmp);
    show_progress(j);
    return 0;
}

static int pass_collect(void *ctx, size_t i, int thread)
{
    job *j = ctx;
    file_result *fr = &j->res[i];
    raster tmp = {0};
    const raster *r;
    if (get_raster(j, i, &tmp, &r, &fr->err) < 0) {
        fr->failed = 1;
        return 1;
    }
    for (int b = 0; b < j->bands; b++)
        percentile_collect(&j->plans[thread * j->bands + b], r, b);
    raster_free(&tmp);
    show_progress(j);
    return 0;
}

/* The error of the first failed file, so the message does not depend on
 * thread timing. */
static void fail_first(const job *j)
{
    for (size_t i = 0; i < j->o->nfiles; i++)
        if (j->res[i].failed)
            cli_fail("%s", j->res[i].err.msg);
    cli_fail("failed");
}

static void run(job *j, parallel_fn fn, const char *pass)
{
    j->pass = pass;
    j->t0 = now();
    if (parallel_for(j->o->nfiles, j->o->threads, fn, j) != 0) {
        end_progress(j);
        fail_first(j);
    }
    end_progress(j);
}

typedef struct {
    int bands;
    char **names;
    moments *m;          /* [bands] */
    double *hist_lo, *hist_hi;
    uint64_t *hist;      /* [bands][hist_bins] */
    double *pct;         /* [bands][npcts] */
    int has_nodata;
    double nodata;
} summary;

static int nthreads(const options *o)
{
    int t = o->threads > 0 ? o->threads : parallel_default_threads();
    return (size_t)t > o->nfiles ? (int)o->nfiles : t;
}

static void merge_moments(job *j, summary *s)
{
    const options *o = j->o;
    s->bands = j->res[0].bands;
    s->names = j->res[0].names;
    s->has_nodata = j->res[0].has_nodata;
    s->nodata = j->res[0].nodata;
    s->m = calloc((size_t)s->bands, sizeof *s->m);
    if (!s->m)
        cli_fail("out of memory");
    for (int b = 0; b < s->bands; b++)
        moments_init(&s->m[b]);
    for (size_t i = 0; i < o->nfiles; i++) {
        if (j->res[i].bands != s->bands)
            cli_fail("%s: has %d bands, but %s has %d", o->files[i], j->res[i].bands, o->files[0],
                     s->bands);
        for (int b = 0; b < s->bands; b++)
            moments_merge(&s->m[b], &j->res[i].m[b]);
    }
    j->bands = s->bands;
    j->total = s->m;
}

static histogram *alloc_histograms(int threads, const summary *s, int bins)
{
    histogram *h = calloc((size_t)threads * s->bands, sizeof *h);
    if (!h)
        cli_fail("out of memory");
    for (int t = 0; t < threads; t++)
        for (int b = 0; b < s->bands; b++)
            if (histogram_init(&h[t * s->bands + b], s->m[b].min, s->m[b].max, bins) < 0)
                cli_fail("out of memory for histograms");
    return h;
}

static void second_passes(job *j, summary *s)
{
    const options *o = j->o;
    int threads = nthreads(o);
    if (!o->hist_bins && !o->npcts)
        return;
    if (o->hist_bins)
        j->hist = alloc_histograms(threads, s, o->hist_bins);
    if (o->npcts)
        j->fine = alloc_histograms(threads, s, PCT_BINS);
    run(j, pass_histograms, "histograms");
    if (o->hist_bins) {
        s->hist = calloc((size_t)s->bands * o->hist_bins, sizeof *s->hist);
        if (!s->hist)
            cli_fail("out of memory");
        for (int b = 0; b < s->bands; b++) {
            for (int t = 1; t < threads; t++)
                histogram_merge(&j->hist[b], &j->hist[t * s->bands + b]);
            memcpy(s->hist + (size_t)b * o->hist_bins, j->hist[b].counts,
                   (size_t)o->hist_bins * sizeof *s->hist);
        }
    }
    if (!o->npcts)
        return;
    j->plans = calloc((size_t)threads * s->bands, sizeof *j->plans);
    s->pct = calloc((size_t)s->bands * o->npcts, sizeof *s->pct);
    if (!j->plans || !s->pct)
        cli_fail("out of memory");
    for (int b = 0; b < s->bands; b++) {
        for (int t = 1; t < threads; t++)
            histogram_merge(&j->fine[b], &j->fine[t * s->bands + b]);
        if (percentile_plan(&j->plans[b], &j->fine[b], o->pcts, o->npcts) < 0)
            cli_fail("out of memory for percentiles");
        for (int t = 1; t < threads; t++)
            if (percentile_clone_empty(&j->plans[t * s->bands + b], &j->plans[b]) < 0)
                cli_fail("out of memory for percentiles");
    }
    run(j, pass_collect, "percentiles");
    for (int b = 0; b < s->bands; b++) {
        for (int t = 1; t < threads; t++)
            if (percentile_merge(&j->plans[b], &j->plans[t * s->bands + b]) < 0)
                cli_fail("out of memory for percentiles");
        if (percentile_finish(&j->plans[b], s->pct + (size_t)b * o->npcts) < 0)
            cli_fail("out of memory for percentiles");
    }
}

/* ---- output --------------------------------------------------------------- */

static void json_number(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.17g", v);
    else
        fputs("null", f);
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void print_json(FILE *f, const options *o, const summary *s)
{
    double k = 1.0 / o->scale;
    fprintf(f, "{\n  \"files\": %zu,\n  \"scale\": ", o->nfiles);
    json_number(f, o->scale);
    fputs(",\n  \"nodata\": ", f);
    s->has_nodata ? json_number(f, s->nodata) : (void)fputs("null", f);
    fputs(",\n  \"bands\": {", f);
    for (int b = 0; b < s->bands; b++) {
        const moments *m = &s->m[b];
        int empty = m->count == 0;
        fputs(b ? ",\n    " : "\n    ", f);
        json_string(f, s->names[b]);
        fprintf(f, ": {\"count\": %llu, \"mean\": ", (unsigned long long)m->count);
        json_number(f, empty ? NAN : m->mean * k);
        fputs(", \"std\": ", f);
        json_number(f, moments_std(m) * k);
        fputs(", \"min\": ", f);
        json_number(f, empty ? NAN : m->min * k);
        fputs(", \"max\": ", f);
        json_number(f, empty ? NAN : m->max * k);
        if (o->npcts) {
            fputs(", \"percentiles\": {", f);
            for (int p = 0; p < o->npcts; p++) {
                fprintf(f, "%s\"%g\": ", p ? ", " : "", o->pcts[p]);
                json_number(f, s->pct[(size_t)b * o->npcts + p] * k);
            }
            fputc('}', f);
        }
        if (o->hist_bins) {
            fputs(", \"histogram\": {\"min\": ", f);
            json_number(f, empty ? NAN : m->min * k);
            fputs(", \"max\": ", f);
            json_number(f, empty ? NAN : m->max * k);
            fputs(", \"counts\": [", f);
            for (int h = 0; h < o->hist_bins; h++)
                fprintf(f, "%s%llu", h ? ", " : "",
                        (unsigned long long)s->hist[(size_t)b * o->hist_bins + h]);
            fputs("]}", f);
        }
        fputc('}', f);
    }
    fputs("\n  }\n}\n", f);
}

static double *band_values(const summary *s, int what, double k)
{
    double *v = malloc((size_t)s->bands * sizeof *v);
    if (!v)
        cli_fail("out of memory");
    for (int b = 0; b < s->bands; b++) {
        const moments *m = &s->m[b];
        int empty = m->count == 0;
        switch (what) {
        case 0: v[b] = empty ? NAN : m->mean * k; break;
        case 1: v[b] = moments_std(m) * k; break;
        case 2: v[b] = empty ? NAN : m->min * k; break;
        case 3: v[b] = empty ? NAN : m->max * k; break;
        default: v[b] = (double)m->count; break;
        }
    }
    return v;
}

static void write_message(const options *o, const summary *s)
{
    static const char *names[] = {"mean", "std", "min", "max", "count"};
    double k = 1.0 / o->scale;
    msg *m = msg_new("stats");
    if (!m)
        cli_fail("out of memory");
    int64_t nb = s->bands;
    for (int t = 0; t < 5; t++) {
        double *v = band_values(s, t, k);
        if (!msg_add_tensor_copy(m, names[t], DT_F8, 1, &nb, v))
            cli_fail("out of memory");
        free(v);
    }
    if (o->npcts) {
        double *p = malloc((size_t)s->bands * o->npcts * sizeof *p);
        if (!p)
            cli_fail("out of memory");
        for (size_t i = 0; i < (size_t)s->bands * o->npcts; i++)
            p[i] = s->pct[i] * k;
        if (!msg_add_tensor_copy(m, "percentiles", DT_F8, 2, (int64_t[]){nb, o->npcts}, p))
            cli_fail("out of memory");
        free(p);
        value_set_floats(&m->meta, "percentile_levels", o->pcts, (size_t)o->npcts);
    }
    if (o->hist_bins) {
        int64_t *h = malloc((size_t)s->bands * o->hist_bins * sizeof *h);
        if (!h)
            cli_fail("out of memory");
        for (size_t i = 0; i < (size_t)s->bands * o->hist_bins; i++)
            h[i] = (int64_t)s->hist[i];
        if (!msg_add_tensor_copy(m, "histogram", DT_I8, 2, (int64_t[]){nb, o->hist_bins}, h))
            cli_fail("out of memory");
        free(h);
    }
    value_set_str(&m->meta, "tool", "tif-stats");
    value_set_str(&m->meta, "version", GEODINO_VERSION);
    value_set_strs(&m->meta, "bands", (const char *const *)s->names, (size_t)s->bands);
    value_set_float(&m->meta, "scale", o->scale);
    if (s->has_nodata)
        value_set_float(&m->meta, "nodata", s->nodata);
    else
        value_set(&m->meta, "nodata", (value){.type = V_NIL});
    value_set_strs(&m->meta, "files", (const char *const *)o->files, o->nfiles);
    gd_err err;
    if (msg_write_file(o->output, &m, 1, &err) < 0)
        cli_fail("%s", err.msg);
    msg_free(m);
}

int main(int argc, char **argv)
{
    cli_init("tif-stats");
    options o;
    parse_args(argc, argv, &o);
    job j = {.o = &o};
    atomic_init(&j.done, 0);
    atomic_init(&j.cached_bytes, 0);
    j.res = calloc(o.nfiles, sizeof *j.res);
    if (!j.res)
        cli_fail("out of memory");
    run(&j, pass_moments, "statistics");
    summary s = {0};
    merge_moments(&j, &s);
    second_passes(&j, &s);
    if (o.output)
        write_message(&o, &s);
    if (!o.output || strcmp(o.output, "-") != 0) {
        print_json(stdout, &o, &s);
        if (fflush(stdout) != 0 || ferror(stdout))
            cli_fail("standard output: write error");
    }
    /* release everything, so leak checkers see a clean exit */
    int threads = nthreads(&o);
    for (size_t i = 0; i < o.nfiles; i++) {
        for (int b = 0; j.res[i].names && b < j.res[i].bands; b++)
            free(j.res[i].names[b]);
        free(j.res[i].names);
        free(j.res[i].m);
        raster_free(&j.res[i].r);
    }
    for (int t = 0; t < threads; t++)
        for (int b = 0; b < s.bands; b++) {
            if (j.hist)
                histogram_free(&j.hist[t * s.bands + b]);
            if (j.fine)
                histogram_free(&j.fine[t * s.bands + b]);
            if (j.plans)
                percentile_free(&j.plans[t * s.bands + b]);
        }
    free(j.hist);
    free(j.fine);
    free(j.plans);
    free(s.m);
    free(s.hist);
    free(s.pct);
    free(j.res);
    for (size_t i = 0; i < o.nfiles; i++)
        free(o.files[i]);
    free(o.files);
    return 0;
}
