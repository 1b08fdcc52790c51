/* knn-eval: DINO's weighted k-NN evaluation of features.  Reads two
 * `features` messages (train and test), prints top-1/top-5 accuracy for
 * each k, and optionally a JSON report with per-class accuracy and the
 * confusion matrix. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "halfprec.h"
#include "json.h"
#include "knn.h"
#include "msg.h"

#define MAX_K 32

typedef struct {
    const char *train, *test, *json;
    int ks[MAX_K];
    int nk;
    double temperature;
    int threads;
} options;

static void usage(void)
{
    printf("Usage: knn-eval --train TRAIN.mpt --test TEST.mpt [OPTION]...\n"
           "DINO's weighted k-NN classifier on two `features` messages: cosine similarity,\n"
           "the k nearest training samples vote with weight exp(sim / T).\n\n"
           "      --train FILE         training features ('-': stdin)\n"
           "      --test FILE          test features\n"
           "  -k, --nb-knn K...        numbers of neighbours (default: 10 20 100 200)\n"
           "  -T, --temperature T      voting temperature (default 0.07)\n"
           "      --json FILE          full report: per-class accuracy, confusion matrices\n"
           "                           ('-': stdout, instead of the text lines)\n"
           "  -j, --threads N          threads (default: all CPUs)\n"
           "  -h, --help               this help\n"
           "  -V, --version            version\n\n"
           "Output: one line per k, k=20 first when it is asked for:\n"
           "  20-NN classifier result: Top1: 85.25, Top5: 97.5\n"
           "Top-5 is reported only with 5 classes or more.  Exit status: 0 ok, 1 runtime\n"
           "error, 2 usage error.\n");
}

static void parse_args(int argc, char **argv, options *o)
{
    enum { OPT_TRAIN = 256, OPT_TEST, OPT_JSON };
    static const struct option longs[] = {
        {"train", required_argument, 0, OPT_TRAIN}, {"test", required_argument, 0, OPT_TEST},
        {"nb-knn", required_argument, 0, 'k'},      {"temperature", required_argument, 0, 'T'},
        {"json", required_argument, 0, OPT_JSON},   {"threads", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},              {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    *o = (options){.temperature = 0.07};
    int c;
    while ((c = getopt_long(argc, argv, "k:T:j:hV", longs, NULL)) != -1) {
        switch (c) {
        case OPT_TRAIN: o->train = optarg; break;
        case OPT_TEST: o->test = optarg; break;
        case OPT_JSON: o->json = optarg; break;
        case 'k':
            /* --nb-knn 10 20 100: the values after the option, up to the next option */
            optind--;
            while (optind < argc && argv[optind][0] != '-') {
                if (o->nk == MAX_K)
                    cli_usage("--nb-knn: more than %d values", MAX_K);
                o->ks[o->nk++] = (int)cli_long("--nb-knn", argv[optind++], 1, 1 << 20);
            }
            if (o->nk == 0)
                cli_usage("--nb-knn: no values");
            break;
        case 'T': o->temperature = cli_double("--temperature", optarg, 1e-6, 1e6); break;
        case 'j': o->threads = (int)cli_long("--threads", optarg, 1, 1024); break;
        case 'h': usage(); exit(0);
        case 'V': cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (optind < argc)
        cli_usage("unexpected argument '%s'", argv[optind]);
    if (!o->train || !o->test)
        cli_usage("--train and --test are both required");
    if (o->nk == 0) {
        static const int dflt[] = {10, 20, 100, 200};
        memcpy(o->ks, dflt, sizeof dflt);
        o->nk = 4;
    }
}

/* Any float dtype to float32. */
static float *to_f32(const tensor *t, const char *path)
{
    float *out = malloc(t->count ? t->count * sizeof *out : 1);
    if (!out)
        cli_fail("%s: out of memory for %zu features", path, t->count);
    if (tensor_to_f32(t, out) < 0)
        cli_fail("%s: tensor \"features\": dtype %s is not a float type", path, dtype_name(t->dtype));
    return out;
}

static msg *load(const char *path, knn_set *set)
{
    gd_err err;
    msg *m = msg_read_one(path, "features", &err);
    if (!m)
        cli_fail("%s", err.msg);
    const tensor *f = msg_get_tensor(m, "features");
    if (!f || f->ndim != 2)
        cli_fail("%s: needs a tensor \"features\" of shape [N, D]", path);
    const tensor *l = msg_require_tensor(m, "labels", DT_I4, 1, &err);
    if (!l)
        cli_fail("%s: %s", path, err.msg);
    if (l->shape[0] != f->shape[0])
        cli_fail("%s: %lld labels for %lld feature rows", path, (long long)l->shape[0],
                 (long long)f->shape[0]);
    set->n = (size_t)f->shape[0];
    set->dim = (size_t)f->shape[1];
    set->x = to_f32(f, path);
    set->labels = malloc(set->n ? set->n * sizeof *set->labels : 1);
    if (!set->labels)
        cli_fail("out of memory");
    memcpy(set->labels, l->data, set->n * sizeof *set->labels);
    for (size_t i = 0; i < set->n; i++)
        if (set->labels[i] < 0)
            cli_fail("%s: label %d of row %zu is negative", path, set->labels[i], i);
    if (set->n == 0)
        cli_fail("%s: no samples", path);
    if (set->dim == 0)
        cli_fail("%s: features have no dimensions", path);
    if (knn_normalize(set, path, &err) < 0)
        cli_fail("%s", err.msg);
    return m;
}

static int count_classes(const knn_set *a, const knn_set *b, const msg *meta_from)
{
    int32_t top = -1;
    for (size_t i = 0; i < a->n; i++)
        top = a->labels[i] > top ? a->labels[i] : top;
    for (size_t i = 0; i < b->n; i++)
        top = b->labels[i] > top ? b->labels[i] : top;
    const value *names = value_get(&meta_from->meta, "classes");
    int64_t named = names && names->type == V_ARRAY ? (int64_t)names->u.c.n : 0;
    return (int)(named > top + 1 ? named : top + 1);
}

static const char *class_name(const msg *m, int c, char *buf, size_t len)
{
    const value *names = value_get(&m->meta, "classes");
    if (names && names->type == V_ARRAY && (size_t)c < names->u.c.n &&
        names->u.c.items[c].type == V_STR)
        return names->u.c.items[c].u.s;
    snprintf(buf, len, "%d", c);
    return buf;
}

static void write_json(FILE *f, const options *o, const msg *train, const knn_set *tr,
                       const knn_set *te, const knn_result *res, const int *order)
{
    int classes = res[0].classes;
    char buf[32];
    fprintf(f, "{\n  \"n_train\": %zu, \"n_test\": %zu, \"dim\": %zu, \"temperature\": %.17g,\n",
            tr->n, te->n, tr->dim, o->temperature);
    fputs("  \"classes\": [", f);
    for (int c = 0; c < classes; c++) {
        fputs(c ? ", " : "", f);
        json_write_string(f, class_name(train, c, buf, sizeof buf));
    }
    fputs("],\n  \"results\": [", f);
    for (int i = 0; i < o->nk; i++) {
        const knn_result *r = &res[order[i]];
        fprintf(f, "%s\n    {\"k\": %d, \"top1\": %.17g", i ? "," : "", o->ks[order[i]],
                100.0 * (double)r->top1 / (double)r->n);
        if (classes >= 5)
            fprintf(f, ", \"top5\": %.17g", 100.0 * (double)r->top5 / (double)r->n);
        fputs(", \"per_class\": [", f);
        for (int c = 0; c < classes; c++) {
            uint64_t row = 0;
            for (int p = 0; p < classes; p++)
                row += r->confusion[(size_t)c * classes + p];
            fputs(c ? ", " : "", f);
            if (row)
                fprintf(f, "%.17g", 100.0 * (double)r->confusion[(size_t)c * classes + c] / (double)row);
            else
                fputs("null", f);
        }
        fputs("],\n     \"confusion\": [", f);
        for (int c = 0; c < classes; c++) {
            fputs(c ? ", [" : "[", f);
            for (int p = 0; p < classes; p++)
                fprintf(f, "%s%llu", p ? ", " : "",
                        (unsigned long long)r->confusion[(size_t)c * classes + p]);
            fputc(']', f);
        }
        fputs("]}", f);
    }
    fputs("\n  ]\n}\n", f);
}

int main(int argc, char **argv)
{
    cli_init("knn-eval");
    options o;
    parse_args(argc, argv, &o);
    knn_set tr = {0}, te = {0};
    msg *mtrain = load(o.train, &tr);
    msg *mtest = load(o.test, &te);
    if (tr.dim != te.dim)
        cli_fail("feature dimensions differ: %s has %zu, %s has %zu", o.train, tr.dim, o.test, te.dim);
    int classes = count_classes(&tr, &te, mtrain);
    knn_result res[MAX_K];
    gd_err err;
    if (knn_classify(&tr, &te, classes, o.ks, o.nk, o.temperature, o.threads, res, &err) < 0)
        cli_fail("%s", err.msg);
    /* report k = 20 first, as DINO's headline number, then the rest in order */
    int order[MAX_K], n = 0;
    for (int i = 0; i < o.nk; i++)
        if (o.ks[i] == 20)
            order[n++] = i;
    for (int i = 0; i < o.nk; i++)
        if (o.ks[i] != 20)
            order[n++] = i;
    int json_stdout = o.json && strcmp(o.json, "-") == 0;
    for (int i = 0; i < o.nk && !json_stdout; i++) {
        const knn_result *r = &res[order[i]];
        printf("%d-NN classifier result: Top1: %.2f", o.ks[order[i]],
               100.0 * (double)r->top1 / (double)r->n);
        if (classes >= 5)
            printf(", Top5: %.2f", 100.0 * (double)r->top5 / (double)r->n);
        putchar('\n');
    }
    if (o.json) {
        FILE *f = json_stdout ? stdout : fopen(o.json, "w");
        if (!f)
            cli_fail("%s: cannot write", o.json);
        write_json(f, &o, mtrain, &tr, &te, res, order);
        if ((f != stdout && fclose(f) != 0) || ferror(stdout))
            cli_fail("%s: write error", o.json);
    }
    if (fflush(stdout) != 0)
        cli_fail("standard output: write error");
    for (int i = 0; i < o.nk; i++)
        knn_result_free(&res[i]);
    free(tr.x);
    free(tr.labels);
    free(te.x);
    free(te.labels);
    msg_free(mtrain);
    msg_free(mtest);
    return 0;
}
