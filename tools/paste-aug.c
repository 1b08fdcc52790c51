/* paste-aug: AEL's class-balancing augmentations for semi-supervised
 * segmentation (the confidence bank, adaptive copy-paste, adaptive
 * cutmix).  This file parses arguments, reads and writes samples and
 * runs the work in parallel; the numerics live in libcommon/aelpaste.c. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aelpaste.h"
#include "cli.h"
#include "io.h"
#include "msg.h"
#include "picture.h"
#include "raster.h"

#define MAX_JSON_BYTES (1 << 20)

enum mode { MODE_COPY_PASTE, MODE_CUTMIX };

/* Parts of the random stream of one sample: (seed, index, part, 0). */
enum { PART_PICK = 0, PART_QUERY = 1, PART_GEOM = 2, PART_CUTMIX = 10 };

typedef struct opts {
    enum mode mode;
    const char *bank, *list, *input, *paste_list, *paste_input;
    const char *output, *out_dir, *preview, *bands, *exclude;
    double prob, smin, smax, flip_prob, area_thresh, area_thresh2;
    int num_cat, ignore, threads, preview_index;
    uint64_t seed;
    int resize_to_base, quiet, progress;
} opts;

typedef struct sample_set {
    ael_sample *s;
    char **name;
    size_t n;
} sample_set;

typedef struct bank {
    int classes;
    double *conf;
    double momentum;
    int64_t updates;
} bank;

/* Which images hold each class (cutmix): the indices of the images where
 * class k is present are idx[off[k] .. off[k+1]). */
typedef struct presence {
    size_t *off, *idx;
} presence;

/* What happened to one base sample. */
typedef struct result {
    msg *m;                    /* the output message; out and mask point into its tensors */
    ael_sample out;
    uint8_t *mask;
    ael_sample shown;          /* the transformed source, kept for --preview only */
    long src;                  /* index of the paste/source sample, -1 when none */
    int applied;
    uint8_t chosen[AEL_MAX_CLASSES];
    int cls, component;
    ael_box box;
    size_t pixels;
    int failed;
    gd_err err;
} result;

/* ---- usage ---------------------------------------------------------------- */

static void usage(void)
{
    printf(
        "Usage: paste-aug bank init --classes C [--value V] [--momentum M] [--seed S] -o BANK\n"
        "       paste-aug bank update --bank BANK --means FILE [--momentum M] [-o BANK]\n"
        "       paste-aug copy-paste --bank BANK [INPUT] [OPTION]...\n"
        "       paste-aug cutmix --bank BANK [INPUT] [OPTION]...\n"
        "AEL's adaptive copy-paste and cutmix (NeurIPS 2021) for segmentation samples.\n"
        "\n"
        "Input (samples: an image and a uint8 label map):\n"
        "  --list FILE          lines 'IMAGE LABEL' (rasters; IMAGE may be a band set)\n"
        "  --input FILE         'sample' messages (default: standard input)\n"
        "  --paste-list FILE    copy-paste: paste samples from here (default: the input)\n"
        "  --paste-input FILE   copy-paste: paste samples as messages\n"
        "  --bands SPEC         bands of the image rasters ('4,3,2' or names)\n"
        "  --ignore-index N     label never pasted nor counted (255)\n"
        "  --resize-to-base     resize a source of another size to the base (else an error)\n"
        "Copy-paste:\n"
        "  --prob P             probability to paste onto a sample (0.5)\n"
        "  --resize MIN MAX     random scale of the paste sample (0.1 2.0)\n"
        "  --flip-prob P        horizontal flip of the paste sample (0.5)\n"
        "  --num-cat N          query classes drawn with replacement (3)\n"
        "  --exclude LIST       classes never drawn, e.g. 0 (none)\n"
        "Cutmix:\n"
        "  --area-thresh A      smallest component, fraction of the image (0.0001)\n"
        "  --area-thresh2 A     area for a class to be present in an image (0.0001)\n"
        "Output:\n"
        "  -o, --output FILE    'sample' messages ('-': stdout; default unless --out-dir)\n"
        "  --out-dir DIR        NNNNNN_image.tif (float32) and NNNNNN_label.tif pairs\n"
        "  --preview FILE.png   base, source, mask and result side by side\n"
        "  --preview-index I    which sample to preview (0)\n"
        "Common:\n"
        "  --seed S             random seed (0); same seed, same bytes for any --threads\n"
        "  --threads N          worker threads (all cores)\n"
        "  --quiet, --progress  progress on stderr off / on\n"
        "  --help, --version\n");
}

/* getopt's own messages are off (opterr = 0): this says it our way. */
static _Noreturn void bad_option(char **argv)
{
    if (optopt && optopt < 256)
        cli_usage("invalid option '-%c' or missing argument", optopt);
    cli_usage("invalid option '%s' or missing argument", argv[optind - 1]);
}

/* ---- bank files ---------------------------------------------------------- */

static int bank_read(const char *path, bank *b, gd_err *err)
{
    msg *m = msg_read_one(path, "bank", err);
    if (!m)
        return -1;
    const tensor *t = msg_require_tensor(m, "confidence", DT_F8, 1, err);
    if (!t || t->count < 1 || t->count > AEL_MAX_CLASSES) {
        if (t)
            gd_errf(err, "tensor \"confidence\": %zu classes, expected 1 to %d", t->count,
                    AEL_MAX_CLASSES);
        msg_free(m);
        return gd_err_prefix(err, "%s", path);
    }
    b->classes = (int)t->count;
    b->conf = malloc(t->count * sizeof *b->conf);
    if (!b->conf) {
        msg_free(m);
        return gd_errf(err, "%s: out of memory", path);
    }
    memcpy(b->conf, t->data, t->nbytes);
    b->momentum = value_float(&m->meta, "momentum", 0.999);
    b->updates = value_int(&m->meta, "updates", 0);
    msg_free(m);
    for (int k = 0; k < b->classes; k++)
        if (!(b->conf[k] >= 0 && b->conf[k] <= 1)) {
            free(b->conf);
            return gd_errf(err, "%s: class %d: confidence %g is not in [0, 1]", path, k,
                           b->conf[k]);
        }
    return 0;
}

static int bank_write(const char *path, const bank *b, gd_err *err)
{
    msg *m = msg_new("bank");
    if (!m || !msg_add_tensor_copy(m, "confidence", DT_F8, 1, (int64_t[]){b->classes}, b->conf) ||
        !value_set_str(&m->meta, "tool", "paste-aug " GEODINO_VERSION) ||
        !value_set_float(&m->meta, "momentum", b->momentum) ||
        !value_set_int(&m->meta, "updates", b->updates)) {
        msg_free(m);
        return gd_errf(err, "out of memory");
    }
    int rc = msg_write_file(path, &m, 1, err);
    msg_free(m);
    return rc;
}

/* Reads a whole small file (or stdin), NUL-terminated. */
static char *slurp(const char *path, size_t max, size_t *len, gd_err *err)
{
    FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!fp) {
        gd_errno(err, path);
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, fp) : 0;
    int bad = !buf || ferror(fp);
    if (fp != stdin)
        fclose(fp);
    if (bad || n > max) {
        free(buf);
        gd_errf(err, "%s: %s", path, bad ? "cannot read" : "larger than 1 MiB");
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Per-class means from JSON text or from a message holding a "means" (or
 * "confidence") vector of <f8 or <f4. */
static int read_means(const char *path, int classes, double *means, gd_err *err)
{
    size_t len;
    char *text = slurp(path, MAX_JSON_BYTES, &len, err);
    if (!text)
        return -1;
    size_t lead = strspn(text, " \t\r\n");
    if (lead < len && (text[lead] == '[' || text[lead] == '{')) {
        int rc = ael_parse_means_json(text, len, classes, means, err);
        free(text);
        return rc < 0 ? gd_err_prefix(err, "%s", path) : 0;
    }
    msg *m = msg_decode(text, len, err);
    free(text);
    if (!m)
        return gd_err_prefix(err, "%s", path);
    const tensor *t = msg_get_tensor(m, "means");
    if (!t)
        t = msg_get_tensor(m, "confidence");
    int rc = 0;
    if (!t || t->ndim != 1 || (t->dtype != DT_F8 && t->dtype != DT_F4))
        rc = gd_errf(err, "%s: no 1-D <f8 or <f4 tensor \"means\" or \"confidence\"", path);
    else if ((int64_t)t->count != classes)
        rc = gd_errf(err, "%s: %zu means, the bank has %d classes", path, t->count, classes);
    else
        for (int k = 0; k < classes; k++)
            means[k] = t->dtype == DT_F8 ? ((const double *)t->data)[k]
                                         : ((const float *)t->data)[k];
    msg_free(m);
    return rc;
}

static int cmd_bank(int argc, char **argv)
{
    if (argc < 2)
        cli_usage("bank: expected 'init' or 'update'");
    int init = !strcmp(argv[1], "init");
    if (!init && strcmp(argv[1], "update"))
        cli_usage("bank: unknown action '%s' (expected 'init' or 'update')", argv[1]);
    static const struct option lo[] = {
        {"classes", 1, 0, 'c'}, {"value", 1, 0, 'v'},  {"momentum", 1, 0, 'm'},
        {"seed", 1, 0, 's'},    {"output", 1, 0, 'o'}, {"bank", 1, 0, 'b'},
        {"means", 1, 0, 'M'},   {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    long classes = 0;
    double fill = -1, momentum = 0.999;
    uint64_t seed = 0;
    const char *out = NULL, *bankpath = NULL, *means = NULL;
    int c, have_momentum = 0;
    optind = 2;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+o:", lo, NULL)) != -1) {
        switch (c) {
        case 'c': classes = cli_long("--classes", optarg, 1, AEL_MAX_CLASSES); break;
        case 'v': fill = cli_double("--value", optarg, 0, 1); break;
        case 'm': momentum = cli_double("--momentum", optarg, 0, 1), have_momentum = 1; break;
        case 's': seed = (uint64_t)cli_long("--seed", optarg, 0, (long)(~0ul >> 1)); break;
        case 'o': out = optarg; break;
        case 'b': bankpath = optarg; break;
        case 'M': means = optarg; break;
        case 'h': usage(); exit(0);
        default: bad_option(argv);
        }
    }
    if (optind < argc)
        cli_usage("bank %s: unexpected argument '%s'", argv[1], argv[optind]);
    gd_err err;
    bank b = {0};
    if (init) {
        if (!classes || !out)
            cli_usage("bank init: --classes and -o are required");
        b.classes = (int)classes;
        b.momentum = momentum;
        if (!(b.conf = malloc((size_t)classes * sizeof *b.conf)))
            cli_fail("out of memory");
        ael_bank_init(b.conf, b.classes, fill, seed);
    } else {
        if (!bankpath || !means)
            cli_usage("bank update: --bank and --means are required");
        if (bank_read(bankpath, &b, &err) < 0)
            cli_fail("%s", err.msg);
        if (have_momentum)
            b.momentum = momentum;
        double *m = malloc((size_t)b.classes * sizeof *m);
        if (!m)
            cli_fail("out of memory");
        if (read_means(means, b.classes, m, &err) < 0 ||
            ael_bank_update(b.conf, m, b.classes, b.momentum, &err) < 0)
            cli_fail("bank update: %s", err.msg);
        free(m);
        b.updates++;
        out = out ? out : bankpath;
    }
    if (bank_write(out, &b, &err) < 0)
        cli_fail("%s", err.msg);
    free(b.conf);
    return 0;
}

/* ---- reading samples ------------------------------------------------------ */

static int set_push(sample_set *set, ael_sample *s, const char *name, gd_err *err)
{
    ael_sample *gs = realloc(set->s, (set->n + 1) * sizeof *gs);
    if (gs)
        set->s = gs;
    char **gn = realloc(set->name, (set->n + 1) * sizeof *gn);
    if (gn)
        set->name = gn;
    char *copy = strdup(name);
    if (!gs || !gn || !copy) {
        free(copy);
        return gd_errf(err, "out of memory");
    }
    set->s[set->n] = *s;
    set->name[set->n++] = copy;
    return 0;
}

static void set_free(sample_set *set)
{
    for (size_t k = 0; k < set->n; k++) {
        ael_sample_free(&set->s[k]);
        free(set->name[k]);
    }
    free(set->s);
    free(set->name);
    memset(set, 0, sizeof *set);
}

/* A label raster as class ids: one band of integers 0..255; pixels the
 * file marks invalid (nodata) become the ignore index. */
static int label_from_raster(const raster *r, int ignore, uint8_t *out, const char *path,
                             gd_err *err)
{
    if (r->bands != 1)
        return gd_errf(err, "%s: a label map has one band, this has %d", path, r->bands);
    size_t npix = (size_t)r->height * r->width;
    for (size_t i = 0; i < npix; i++) {
        float v = r->data[i];
        if (r->valid && !r->valid[i]) {
            out[i] = (uint8_t)ignore;
            continue;
        }
        if (!(v >= 0 && v <= 255) || v != floorf(v))
            return gd_errf(err, "%s: pixel %zu: %g is not a class id in 0..255", path, i, v);
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int load_pair(const char *line, const opts *o, ael_sample *s, gd_err *err)
{
    char *img = strdup(line);
    if (!img)
        return gd_errf(err, "out of memory");
    char *sep = img + strcspn(img, " \t");
    char *lab = sep + strspn(sep, " \t");
    if (!*sep || !*lab || lab[strcspn(lab, " \t")]) {
        free(img);
        return gd_errf(err, "'%s': expected 'IMAGE LABEL'", line);
    }
    *sep = 0;
    raster ri = {0}, rl = {0};
    raster_opts ropt = {.bands = o->bands};
    int rc = -1;
    if (raster_read(img, &ropt, &ri, err) < 0 || raster_read(lab, NULL, &rl, err) < 0)
        goto done;
    if (ri.height != rl.height || ri.width != rl.width) {
        gd_errf(err, "%s is %dx%d, its label %s is %dx%d", img, ri.height, ri.width, lab,
                rl.height, rl.width);
        goto done;
    }
    if (ael_sample_alloc(s, ri.bands, ri.height, ri.width, err) < 0)
        goto done;
    memcpy(s->image, ri.data, (size_t)ri.bands * ri.height * ri.width * sizeof *s->image);
    rc = label_from_raster(&rl, o->ignore, s->label, lab, err);
    if (rc < 0)
        ael_sample_free(s);
done:
    raster_free(&ri);
    raster_free(&rl);
    free(img);
    return rc;
}

static int load_list(const char *path, const opts *o, sample_set *set, gd_err *err)
{
    char **lines = NULL;
    size_t n = 0;
    if (read_lines(path, &lines, &n, err) < 0)
        return -1;
    int rc = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        ael_sample s;
        if (load_pair(lines[k], o, &s, err) < 0)
            rc = gd_err_prefix(err, "%s: line %zu", path, k + 1);
        else {
            lines[k][strcspn(lines[k], " \t")] = 0;   /* the sample's name: its image */
            if ((rc = set_push(set, &s, lines[k], err)) < 0)
                ael_sample_free(&s);
        }
    }
    free_lines(lines, n);
    return rc;
}

/* The image tensor as float32, from any numeric dtype a writer might use. */
static int image_from_tensor(const tensor *t, float *out, gd_err *err)
{
    if (t->dtype == DT_F4) {   /* the usual case: the bytes as they are */
        memcpy(out, t->data, t->nbytes);
        return 0;
    }
    for (size_t i = 0; i < t->count; i++) {
        double v;
        switch (t->dtype) {
        case DT_F4: v = ((const float *)t->data)[i]; break;
        case DT_F8: v = ((const double *)t->data)[i]; break;
        case DT_U1: v = ((const uint8_t *)t->data)[i]; break;
        case DT_U2: v = ((const uint16_t *)t->data)[i]; break;
        case DT_I2: v = ((const int16_t *)t->data)[i]; break;
        case DT_I4: v = ((const int32_t *)t->data)[i]; break;
        default: return gd_errf(err, "tensor \"image\": dtype %s is not supported", dtype_name(t->dtype));
        }
        out[i] = (float)v;
    }
    return 0;
}

static int sample_from_msg(const msg *m, ael_sample *s, gd_err *err)
{
    if (strcmp(m->kind, "sample"))
        return gd_errf(err, "kind is \"%s\", expected \"sample\"", m->kind);
    const tensor *img = msg_get_tensor(m, "image");
    const tensor *lab = msg_require_tensor(m, "label", DT_U1, 2, err);
    if (!img)
        return gd_errf(err, "no tensor \"image\"");
    if (!lab)
        return -1;
    if (img->ndim != 3)
        return gd_errf(err, "tensor \"image\" has %d dimensions, expected 3 [C,H,W]", img->ndim);
    if (img->shape[1] != lab->shape[0] || img->shape[2] != lab->shape[1])
        return gd_errf(err, "image is %ldx%ld, label is %ldx%ld", (long)img->shape[1],
                       (long)img->shape[2], (long)lab->shape[0], (long)lab->shape[1]);
    if (img->shape[0] > 4096 || img->shape[1] > 65536 || img->shape[2] > 65536)
        return gd_errf(err, "image shape too large");
    if (ael_sample_alloc(s, (int)img->shape[0], (int)img->shape[1], (int)img->shape[2], err) < 0)
        return -1;
    if (image_from_tensor(img, s->image, err) < 0) {
        ael_sample_free(s);
        return -1;
    }
    memcpy(s->label, lab->data, lab->nbytes);
    return 0;
}

static int load_msgs(const char *path, sample_set *set, gd_err *err)
{
    msg_reader *r = msg_reader_open(path, err);
    if (!r)
        return -1;
    msg *m;
    int rc;
    while ((rc = msg_reader_next(r, &m, err)) == 1) {
        ael_sample s;
        char name[64];
        snprintf(name, sizeof name, "%s#%zu", path, msg_reader_count(r) - 1);
        const value *files = value_get(&m->meta, "files");
        const char *fname = files && files->type == V_ARRAY && files->u.c.n > 0 &&
                                    files->u.c.items[0].type == V_STR
                                ? files->u.c.items[0].u.s
                                : name;
        if (sample_from_msg(m, &s, err) < 0)
            rc = gd_err_prefix(err, "%s: message %zu", path, msg_reader_count(r));
        else if ((rc = set_push(set, &s, fname, err)) < 0)
            ael_sample_free(&s);
        msg_free(m);
        if (rc < 0)
            break;
    }
    msg_reader_close(r);
    return rc < 0 ? -1 : 0;
}

/* ---- the work on one sample ------------------------------------------- */

/* The source sample at the base's size: itself when sizes agree, a copy
 * resized into *tmp with --resize-to-base, otherwise an error (NULL).
 * Bands must always agree. */
static const ael_sample *source_at_base(const ael_sample *base, const ael_sample *src,
                                        const char *what, const opts *o, ael_sample *tmp,
                                        gd_err *err)
{
    memset(tmp, 0, sizeof *tmp);
    if (src->bands != base->bands) {
        gd_errf(err, "%s has %d bands, the base has %d", what, src->bands, base->bands);
        return NULL;
    }
    if (src->height == base->height && src->width == base->width)
        return src;
    if (!o->resize_to_base) {
        gd_errf(err, "%s is %dx%d, the base is %dx%d (use --resize-to-base)", what, src->height,
                src->width, base->height, base->width);
        return NULL;
    }
    return ael_sample_resize(src, base->height, base->width, tmp, err) < 0 ? NULL : tmp;
}

static int copy_paste_one(const opts *o, const bank *b, const double *probs,
                          const sample_set *in, const sample_set *pool, int same_pool, size_t i,
                          result *res)
{
    const ael_sample *base = &in->s[i];
    rng r;
    rng_init(&r, o->seed, i, PART_PICK, 0);
    res->src = -1;
    if (!rng_bernoulli(&r, o->prob) || pool->n == 0 || (same_pool && pool->n < 2)) {
        /* the output is the base unchanged */
        size_t npix = (size_t)base->height * base->width;
        memcpy(res->out.image, base->image, npix * base->bands * sizeof *base->image);
        memcpy(res->out.label, base->label, npix);
        return 0;
    }
    size_t j = same_pool ? rng_below(&r, pool->n - 1) : rng_below(&r, pool->n);
    if (same_pool && j >= i)
        j++;        /* never paste a sample onto itself */
    res->src = (long)j;
    res->applied = 1;
    char what[64];
    snprintf(what, sizeof what, "paste sample %zu", j);
    ael_sample tmp, shaped;
    const ael_sample *at_base = source_at_base(base, &pool->s[j], what, o, &tmp, &res->err);
    if (!at_base)
        return -1;
    rng_init(&r, o->seed, i, PART_QUERY, 0);
    ael_query_classes(probs, b->classes, o->num_cat, &r, res->chosen);
    rng_init(&r, o->seed, i, PART_GEOM, 0);
    ael_geom g;
    ael_draw_geom(&r, at_base->height, at_base->width, base->height, base->width, o->smin, o->smax,
                  o->flip_prob, &g);
    int rc = ael_apply_geom(at_base, &g, base->height, base->width, o->ignore, &shaped, &res->err);
    ael_sample_free(&tmp);
    if (rc < 0)
        return -1;
    res->pixels = ael_copy_paste(base, &shaped, res->chosen, b->classes, o->ignore, &res->out,
                                 res->mask);
    if (o->preview && (long)i == o->preview_index)
        res->shown = shaped;
    else
        ael_sample_free(&shaped);
    return 0;
}

static int cutmix_one(const opts *o, const bank *b, const double *probs, const sample_set *in,
                      const presence *pres, size_t i, result *res)
{
    const ael_sample *base = &in->s[i];
    rng r;
    rng_init(&r, o->seed, i, PART_CUTMIX, 0);
    res->cls = ael_draw_class(probs, b->classes, &r);
    /* AEL's sample_from_bank: a random image where the class is present,
     * any image when there is none */
    size_t count = pres->off[res->cls + 1] - pres->off[res->cls];
    size_t pick = rng_below(&r, count ? count : in->n);
    size_t j = count ? pres->idx[pres->off[res->cls] + pick] : pick;
    res->src = (long)j;
    res->applied = 1;
    char what[64];
    snprintf(what, sizeof what, "source sample %zu", j);
    ael_sample tmp;
    const ael_sample *src = source_at_base(base, &in->s[j], what, o, &tmp, &res->err);
    if (!src)
        return -1;
    res->component = ael_cutmix_box(src->label, src->height, src->width, res->cls, o->area_thresh,
                                    &r, &res->box, &res->err);
    if (res->component < 0) {
        ael_sample_free(&tmp);
        return -1;
    }
    ael_cutmix(base, src, &res->box, &res->out, res->mask);
    res->pixels = (size_t)(res->box.y1 - res->box.y0) * (size_t)(res->box.x1 - res->box.x0);
    int shown = o->preview && (long)i == o->preview_index;
    if (shown && !tmp.image)
        ael_sample_resize(src, src->height, src->width, &res->shown, &res->err);  /* a copy */
    else if (shown)
        res->shown = tmp;
    else
        ael_sample_free(&tmp);
    return 0;
}

typedef struct job {
    const opts *o;
    const bank *b;
    const double *probs;
    const sample_set *in, *pool;
    int same_pool;
    const presence *present;
} job;

/* The output message with zeroed image, label and mask tensors, the
 * result's out and mask pointing into them: the work writes the output
 * in place, with no copy. */
static int result_alloc(const ael_sample *base, result *res)
{
    int64_t ishape[3] = {base->bands, base->height, base->width};
    int64_t lshape[2] = {base->height, base->width};
    res->m = msg_new("sample");
    if (!res->m || !msg_add_tensor(res->m, "image", DT_F4, 3, ishape) ||
        !msg_add_tensor(res->m, "label", DT_U1, 2, lshape) ||
        !msg_add_tensor(res->m, "mask", DT_U1, 2, lshape))
        return gd_errf(&res->err, "out of memory for a %dx%dx%d sample", base->bands,
                       base->height, base->width);
    /* data pointers stay valid when the tensor array grows */
    res->out = (ael_sample){base->bands, base->height, base->width,
                            msg_get_tensor(res->m, "image")->data,
                            msg_get_tensor(res->m, "label")->data};
    res->mask = msg_get_tensor(res->m, "mask")->data;
    return 0;
}

static void run_one(const job *jb, size_t i, result *res)
{
    memset(res, 0, sizeof *res);
    int rc = result_alloc(&jb->in->s[i], res);
    if (rc == 0)
        rc = jb->o->mode == MODE_COPY_PASTE
                 ? copy_paste_one(jb->o, jb->b, jb->probs, jb->in, jb->pool, jb->same_pool, i, res)
                 : cutmix_one(jb->o, jb->b, jb->probs, jb->in, jb->present, i, res);
    if (rc < 0) {
        res->failed = 1;
        gd_err_prefix(&res->err, "sample %zu (%s)", i, jb->in->name[i]);
    }
}

static void result_free(result *res)
{
    msg_free(res->m);
    ael_sample_free(&res->shown);
    memset(res, 0, sizeof *res);
}

/* ---- output -------------------------------------------------------------- */

static value int_array(const long *v, int n)
{
    value a = value_array();
    for (int k = 0; k < n; k++)
        value_push(&a, (value){.type = V_INT, .u.i = v[k]});
    return a;
}

/* Adds the description of what was done to the result's message. */
static int result_meta(const job *jb, size_t i, const result *res)
{
    const char *files[2] = {jb->in->name[i],
                            res->src >= 0 ? (jb->o->mode == MODE_COPY_PASTE ? jb->pool : jb->in)
                                                ->name[res->src]
                                          : NULL};
    int ok = 1;
    value *meta = &res->m->meta;
    ok = ok && value_set_str(meta, "tool", "paste-aug " GEODINO_VERSION) &&
         value_set_str(meta, "op", jb->o->mode == MODE_COPY_PASTE ? "copy-paste" : "cutmix") &&
         value_set_strs(meta, "files", files, res->src >= 0 ? 2 : 1) &&
         value_set_int(meta, "index", (int64_t)i) && value_set_int(meta, "source", res->src) &&
         value_set_int(meta, "seed", (int64_t)jb->o->seed) &&
         value_set_bool(meta, "applied", res->applied) &&
         value_set_int(meta, "pixels", (int64_t)res->pixels);
    if (ok && jb->o->mode == MODE_COPY_PASTE) {
        long cls[AEL_MAX_CLASSES];
        int n = 0;
        for (int k = 0; k < jb->b->classes; k++)
            if (res->chosen[k])
                cls[n++] = k;
        ok = value_set(meta, "query_classes", int_array(cls, n)) != NULL;
    } else if (ok) {
        long box[4] = {res->box.y0, res->box.x0, res->box.y1, res->box.x1};
        ok = value_set_int(meta, "class", res->cls) &&
             value_set(meta, "box", int_array(box, 4)) &&
             value_set_bool(meta, "component", res->component == 1);
    }
    return ok ? 0 : -1;
}

static int write_pair(const char *dir, size_t i, const ael_sample *s, gd_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%06zu_image.tif", dir, i);
    if (raster_write(path, s->image, RT_F32, s->bands, s->height, s->width, err) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/%06zu_label.tif", dir, i);
    return raster_write(path, s->label, RT_U8, 1, s->height, s->width, err);
}

/* One panel of the preview: bands 1-3 of img (repeated when fewer)
 * stretched with the base's 2-98 percentiles. */
static void panel(uint8_t *rgb, int total_w, int x0, const ael_sample *img, const double *lo,
                  const double *hi)
{
    size_t npix = (size_t)img->height * img->width;
    for (int ch = 0; ch < 3; ch++) {
        int band = ch < img->bands ? ch : img->bands - 1;
        for (int y = 0; y < img->height; y++)
            stretch_to_u8(img->image + band * npix + (size_t)y * img->width, (size_t)img->width,
                          lo[ch], hi[ch], rgb + ((size_t)y * total_w + x0) * 3 + ch, 3);
    }
}

static int write_preview(const char *path, const ael_sample *base, const result *res, gd_err *err)
{
    int H = base->height, W = base->width, gap = 4, tw = 4 * W + 3 * gap;
    size_t npix = (size_t)H * W;
    uint8_t *rgb = calloc((size_t)tw * H * 3, 1);
    if (!rgb)
        return gd_errf(err, "out of memory");
    double lo[3], hi[3];
    for (int ch = 0; ch < 3; ch++) {
        int band = ch < base->bands ? ch : base->bands - 1;
        lo[ch] = percentile_f32(base->image + band * npix, npix, 2);
        hi[ch] = percentile_f32(base->image + band * npix, npix, 98);
        if (!(hi[ch] > lo[ch]))
            hi[ch] = lo[ch] + 1;
    }
    panel(rgb, tw, 0, base, lo, hi);
    if (res->shown.image)
        panel(rgb, tw, W + gap, &res->shown, lo, hi);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            memset(rgb + ((size_t)y * tw + 2 * (W + gap) + x) * 3, res->mask[y * W + x] ? 255 : 0, 3);
    panel(rgb, tw, 3 * (W + gap), &res->out, lo, hi);
    int rc = png_write_rgb(path, rgb, tw, H, err);
    free(rgb);
    return rc;
}

/* Runs every sample, a chunk at a time in parallel, writing results in
 * input order so the output bytes do not depend on the threads. */
static int run_all(const job *jb, gd_err *err)
{
    const opts *o = jb->o;
    size_t n = jb->in->n, chunk = (size_t)o->threads * 8;
    int to_msgs = o->output != NULL;
    msg_file *mf = NULL;
    if (to_msgs && strcmp(o->output, "-") && !(mf = msg_file_create(o->output, err)))
        return -1;
    result *res = calloc(chunk, sizeof *res);
    if (!res) {
        if (mf)
            msg_file_abort(mf);
        return gd_errf(err, "out of memory");
    }
    int progress = cli_progress_enabled(o->quiet, o->progress), rc = 0;
    for (size_t start = 0; start < n && rc == 0; start += chunk) {
        size_t m = n - start < chunk ? n - start : chunk;
#pragma omp parallel for schedule(dynamic) num_threads(o->threads)
        for (size_t k = 0; k < m; k++)
            run_one(jb, start + k, &res[k]);
        for (size_t k = 0; k < m && rc == 0; k++) {
            size_t i = start + k;
            if (res[k].failed) {
                *err = res[k].err;
                rc = -1;
                break;
            }
            if (to_msgs) {
                if (result_meta(jb, i, &res[k]) < 0)
                    rc = gd_errf(err, "out of memory");
                else if (mf ? msg_file_put(mf, res[k].m, err)
                            : msg_write_fd(STDOUT_FILENO, res[k].m, err))
                    rc = -1;
            }
            if (rc == 0 && o->out_dir && write_pair(o->out_dir, i, &res[k].out, err) < 0)
                rc = -1;
            if (rc == 0 && o->preview && (long)i == o->preview_index &&
                write_preview(o->preview, &jb->in->s[i], &res[k], err) < 0)
                rc = -1;
        }
        for (size_t k = 0; k < m; k++)
            result_free(&res[k]);
        if (progress)
            fprintf(stderr, "\rpaste-aug: %zu/%zu samples", start + m, n);
    }
    if (progress)
        fputc('\n', stderr);
    free(res);
    if (mf)
        return rc == 0 ? msg_file_commit(mf, err) : (msg_file_abort(mf), -1);
    return rc;
}

/* ---- options of copy-paste and cutmix --------------------------------------- */

/* A comma-separated list of class ids into a 0/1 table. */
static void parse_exclude(const char *s, uint8_t *excluded)
{
    char *copy = strdup(s), *save = NULL;
    if (!copy)
        cli_fail("out of memory");
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        excluded[cli_long("--exclude", tok, 0, AEL_MAX_CLASSES - 1)] = 1;
    free(copy);
}

static void parse_resize(opts *o, int argc, char **argv)
{
    if (strchr(optarg, ',')) {
        double v[2];
        if (cli_doubles("--resize", optarg, v, 2, 1e-3, 100) != 2)
            cli_usage("--resize: expected MIN MAX");
        o->smin = v[0], o->smax = v[1];
    } else {
        if (optind >= argc)
            cli_usage("--resize: expected MIN MAX");
        o->smin = cli_double("--resize", optarg, 1e-3, 100);
        o->smax = cli_double("--resize", argv[optind++], 1e-3, 100);
    }
    if (o->smax < o->smin)
        cli_usage("--resize: MAX %g is below MIN %g", o->smax, o->smin);
}

static void parse_aug(int argc, char **argv, opts *o)
{
    enum { O_BANK = 256, O_LIST, O_INPUT, O_PLIST, O_PINPUT, O_OUTDIR, O_PREVIEW, O_PIDX, O_BANDS,
           O_EXCL, O_PROB, O_RESIZE, O_FLIP, O_NCAT, O_IGN, O_AT, O_AT2, O_SEED, O_THR, O_R2B,
           O_QUIET, O_PROG };
    static const struct option lo[] = {
        {"bank", 1, 0, O_BANK},          {"list", 1, 0, O_LIST},
        {"input", 1, 0, O_INPUT},        {"paste-list", 1, 0, O_PLIST},
        {"paste-input", 1, 0, O_PINPUT}, {"output", 1, 0, 'o'},
        {"out-dir", 1, 0, O_OUTDIR},     {"preview", 1, 0, O_PREVIEW},
        {"preview-index", 1, 0, O_PIDX}, {"bands", 1, 0, O_BANDS},
        {"exclude", 1, 0, O_EXCL},       {"prob", 1, 0, O_PROB},
        {"resize", 1, 0, O_RESIZE},      {"flip-prob", 1, 0, O_FLIP},
        {"num-cat", 1, 0, O_NCAT},       {"ignore-index", 1, 0, O_IGN},
        {"area-thresh", 1, 0, O_AT},     {"area-thresh2", 1, 0, O_AT2},
        {"seed", 1, 0, O_SEED},          {"threads", 1, 0, O_THR},
        {"resize-to-base", 0, 0, O_R2B}, {"quiet", 0, 0, O_QUIET},
        {"progress", 0, 0, O_PROG},      {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+o:h", lo, NULL)) != -1) {
        switch (c) {
        case O_BANK: o->bank = optarg; break;
        case O_LIST: o->list = optarg; break;
        case O_INPUT: o->input = optarg; break;
        case O_PLIST: o->paste_list = optarg; break;
        case O_PINPUT: o->paste_input = optarg; break;
        case 'o': o->output = optarg; break;
        case O_OUTDIR: o->out_dir = optarg; break;
        case O_PREVIEW: o->preview = optarg; break;
        case O_PIDX: o->preview_index = (int)cli_long("--preview-index", optarg, 0, 1L << 30); break;
        case O_BANDS: o->bands = optarg; break;
        case O_EXCL: o->exclude = optarg; break;
        case O_PROB: o->prob = cli_double("--prob", optarg, 0, 1); break;
        case O_RESIZE: parse_resize(o, argc, argv); break;
        case O_FLIP: o->flip_prob = cli_double("--flip-prob", optarg, 0, 1); break;
        case O_NCAT: o->num_cat = (int)cli_long("--num-cat", optarg, 1, 1000); break;
        case O_IGN: o->ignore = (int)cli_long("--ignore-index", optarg, 0, 255); break;
        case O_AT: o->area_thresh = cli_double("--area-thresh", optarg, 0, 1); break;
        case O_AT2: o->area_thresh2 = cli_double("--area-thresh2", optarg, 0, 1); break;
        case O_SEED: o->seed = (uint64_t)cli_long("--seed", optarg, 0, (long)(~0ul >> 1)); break;
        case O_THR: o->threads = (int)cli_long("--threads", optarg, 1, 1024); break;
        case O_R2B: o->resize_to_base = 1; break;
        case O_QUIET: o->quiet = 1; break;
        case O_PROG: o->progress = 1; break;
        case 'h': usage(); exit(0);
        default: bad_option(argv);
        }
    }
    if (optind < argc)
        cli_usage("unexpected argument '%s'", argv[optind]);
    if (!o->bank)
        cli_usage("--bank is required");
    if (o->list && o->input)
        cli_usage("--list and --input exclude each other");
    if (o->paste_list && o->paste_input)
        cli_usage("--paste-list and --paste-input exclude each other");
    if (o->paste_input && !strcmp(o->paste_input, "-") && !o->list &&
        (!o->input || !strcmp(o->input, "-")))
        cli_usage("--paste-input -: standard input already holds the base samples");
    if (o->mode == MODE_CUTMIX && (o->paste_list || o->paste_input))
        cli_usage("cutmix takes its sources from the input; no --paste-list");
    if (!o->output && !o->out_dir)
        o->output = "-";
    if (o->output && !strcmp(o->output, "-") && isatty(STDOUT_FILENO))
        cli_usage("refusing to write messages to a terminal (use -o FILE or --out-dir)");
}

/* AEL's per-image class-presence bank, as one list of images per class. */
static int presence_build(const sample_set *in, int classes, const opts *o, presence *p,
                          gd_err *err)
{
    uint8_t *flags = calloc(in->n ? in->n * (size_t)classes : 1, 1);
    p->off = calloc((size_t)classes + 1, sizeof *p->off);
    if (!flags || !p->off) {
        free(flags);
        return gd_errf(err, "out of memory");
    }
    for (size_t j = 0; j < in->n; j++) {
        uint8_t *f = flags + j * classes;
        ael_presence(in->s[j].label, (size_t)in->s[j].height * in->s[j].width, classes, o->ignore,
                     o->area_thresh2, f);
        for (int k = 0; k < classes; k++)
            p->off[k + 1] += f[k];
    }
    for (int k = 0; k < classes; k++)
        p->off[k + 1] += p->off[k];
    p->idx = malloc((p->off[classes] ? p->off[classes] : 1) * sizeof *p->idx);
    if (!p->idx) {
        free(flags);
        return gd_errf(err, "out of memory");
    }
    size_t *fill = calloc((size_t)classes, sizeof *fill);
    for (size_t j = 0; fill && j < in->n; j++)   /* in image order, as AEL's nonzero() */
        for (int k = 0; k < classes; k++)
            if (flags[j * classes + k])
                p->idx[p->off[k] + fill[k]++] = j;
    free(flags);
    if (!fill)
        return gd_errf(err, "out of memory");
    free(fill);
    return 0;
}

static int cmd_aug(enum mode mode, int argc, char **argv)
{
    opts o = {.mode = mode, .prob = 0.5, .smin = 0.1, .smax = 2.0, .flip_prob = 0.5,
              .num_cat = 3, .ignore = 255, .area_thresh = 0.0001, .area_thresh2 = 0.0001,
              .threads = omp_get_num_procs()};
    parse_aug(argc, argv, &o);
    gd_err err;
    bank b;
    if (bank_read(o.bank, &b, &err) < 0)
        cli_fail("%s", err.msg);
    uint8_t excluded[AEL_MAX_CLASSES] = {0}, cand[AEL_MAX_CLASSES];
    if (o.exclude)
        parse_exclude(o.exclude, excluded);
    for (int k = 0; k < b.classes; k++)
        cand[k] = !excluded[k] && k != o.ignore;
    double probs[AEL_MAX_CLASSES];
    if (ael_class_probs(b.conf, cand, b.classes, mode == MODE_COPY_PASTE ? 0.5 : 1.0, probs) == 0)
        cli_usage("no class left to draw (the bank has %d, all excluded)", b.classes);

    sample_set in = {0}, pool = {0};
    int rc = o.list ? load_list(o.list, &o, &in, &err) : load_msgs(o.input ? o.input : "-", &in, &err);
    if (rc == 0 && o.paste_list)
        rc = load_list(o.paste_list, &o, &pool, &err);
    else if (rc == 0 && o.paste_input)
        rc = load_msgs(o.paste_input, &pool, &err);
    if (rc < 0)
        cli_fail("%s", err.msg);
    if (o.preview && (size_t)o.preview_index >= in.n)
        cli_fail("--preview-index %d: the input has %zu samples", o.preview_index, in.n);
    int same_pool = !o.paste_list && !o.paste_input;
    if (o.out_dir && mkdir(o.out_dir, 0777) < 0 && errno != EEXIST)
        cli_fail("%s: %s", o.out_dir, strerror(errno));

    presence pres = {0};
    if (mode == MODE_CUTMIX && presence_build(&in, b.classes, &o, &pres, &err) < 0)
        cli_fail("%s", err.msg);
    job jb = {&o, &b, probs, &in, same_pool ? &in : &pool, same_pool, &pres};
    if (run_all(&jb, &err) < 0)
        cli_fail("%s", err.msg);
    free(pres.off);
    free(pres.idx);
    free(b.conf);
    set_free(&in);
    set_free(&pool);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("paste-aug");
    if (argc < 2)
        cli_usage("expected a command: bank, copy-paste or cutmix");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage();
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        cli_print_version();
        return 0;
    }
    if (!strcmp(cmd, "bank"))
        return cmd_bank(argc - 1, argv + 1);
    if (!strcmp(cmd, "copy-paste"))
        return cmd_aug(MODE_COPY_PASTE, argc - 1, argv + 1);
    if (!strcmp(cmd, "cutmix"))
        return cmd_aug(MODE_CUTMIX, argc - 1, argv + 1);
    cli_usage("unknown command '%s' (expected bank, copy-paste or cutmix)", cmd);
}
