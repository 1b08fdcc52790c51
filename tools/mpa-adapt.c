/* mpa-adapt: semantic segmentation on a DINO backbone and Mutual
 * Prototypical Adaptation (Trans4PASS, CVPR 2022) to a new domain.
 *
 *   mpa-adapt train-source --ckpt DINO.mpt --num-classes K --list SRC.txt -o seg.mpt
 *   mpa-adapt pseudo-label --model seg.mpt --list TGT.txt --out-dir DIR -o summary.json
 *   mpa-adapt prototypes   --model seg.mpt --source SRC.txt --target DIR/list.txt -o protos.mpt
 *   mpa-adapt adapt        --model seg.mpt --source SRC.txt --target DIR/list.txt
 *                          --protos protos.mpt -o adapted.mpt
 *   mpa-adapt eval         --model adapted.mpt --list TEST.txt -o eval.json
 *
 * The numerical work is in libcommon/seg.c (the model, on the backend
 * seam) and libcommon/mpa.c (thresholds, prototypes, IoU). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "cli.h"
#include "json.h"
#include "mpa.h"
#include "raster.h"
#include "rng.h"
#include "seg.h"

#define MAX_SCALES 16

typedef struct options {
    const char *cmd;
    const char *ckpt, *model, *list, *samples, *source, *target, *protos, *out, *out_dir, *log,
        *bank_out, *levels, *class_weights, *device, *precision, *head;
    bool student, quiet, finetune;
    int num_classes, emb_chans, batch, bank_every, nscales, dmlp_blocks;
    long steps, save_every;
    double lr, backbone_lr_mult, wd, momentum, max_thresh, lambda_proto, temp, alpha, bank_momentum;
    double scales[MAX_SCALES];
    seg_optim optim;
    uint64_t seed;
} options;

static void usage(void)
{
    printf(
        "Usage: mpa-adapt COMMAND [OPTION]...\n"
        "Semantic segmentation on a DINO backbone (dino-step checkpoint) and Mutual\n"
        "Prototypical Adaptation to a new domain.  Commands:\n\n"
        "  train-source  supervised training of the decoder on labelled source tiles\n"
        "  pseudo-label  multi-scale predictions on target tiles -> label rasters\n"
        "  prototypes    per-class mean features of both domains -> the mutual bank\n"
        "  adapt         source CE + target CE on pseudo-labels + prototype loss\n"
        "  eval          mIoU, per-class IoU and pixel accuracy (JSON)\n\n"
        "Model:\n"
        "      --ckpt FILE          dino-step checkpoint (train-source: a fresh decoder)\n"
        "      --model FILE         segmodel checkpoint (every command; train-source resumes)\n"
        "      --student            the student's backbone (default: the teacher's)\n"
        "      --freeze-backbone    train the decoder only (the default)\n"
        "      --finetune           train-source, adapt: the backbone trains too\n"
        "      --backbone-lr-mult X its learning rate is lr x X (0.1)\n"
        "      --levels L,L,...     blocks whose patch tokens feed the decoder\n"
        "                           (default 3,6,9,12 scaled to the depth: 1,2,3 for depth 3)\n"
        "      --emb-chans N        decoder channels (128)\n"
        "      --head plain|dmlp    decoder head (plain); dmlp: deformable MLP blocks on\n"
        "                           the fused map (train-source with --ckpt)\n"
        "      --dmlp-blocks N      their number (2)\n"
        "      --num-classes K      classes (train-source with --ckpt)\n"
        "Data (lines \"image label\"; TIFFs, square, a multiple of the patch):\n"
        "      --list FILE          train-source, pseudo-label (image column), eval\n"
        "      --samples FILE       train-source: `sample` messages (paste-aug; '-': stdin)\n"
        "      --source FILE        prototypes, adapt: labelled source tiles\n"
        "      --target FILE        prototypes, adapt: target tiles with pseudo-labels\n"
        "Training (train-source, adapt):\n"
        "      --steps N            iterations (200)\n"
        "      --batch-size N       tiles per iteration and per pass (8)\n"
        "      --optimizer adamw|sgd   (adamw)\n"
        "      --lr X               base learning rate, poly schedule (0.001)\n"
        "      --weight-decay X     on weights, not biases (0.01)\n"
        "      --momentum X         SGD momentum (0.9)\n"
        "      --class-weights W,W  cross-entropy class weights\n"
        "      --seed N             decoder initialisation and sampling (0)\n"
        "      --log FILE           JSON lines, one per iteration\n"
        "      --save-every N       also save the model every N iterations\n"
        "Pseudo-labels:\n"
        "      --scales S,S,...     scales averaged (0.5,0.75,1,1.25,1.5)\n"
        "      --max-thresh X       cap of the per-class median thresholds (0.9)\n"
        "      --out-dir DIR        label rasters and DIR/list.txt\n"
        "Adaptation:\n"
        "      --protos FILE        the initial bank (a `prototypes` message)\n"
        "      --lambda-proto X     weight of the prototype loss (0.001)\n"
        "      --proto-temp T       its temperature (20)\n"
        "      --proto-alpha A      its KL share (0.9)\n"
        "      --bank-every N       bank update period in iterations (100)\n"
        "      --bank-momentum M    (0.999)\n"
        "      --bank-out FILE      the final bank (a `prototypes` message)\n"
        "Common:\n"
        "  -o, --output FILE        model (train-source, adapt), prototypes, or JSON\n"
        "                           (pseudo-label, eval; default stdout)\n"
        "      --device auto|cpu|cuda[:N]  backend (auto: CUDA when built and a GPU is\n"
        "                           present, else the CPU; default: $GEODINO_DEVICE\n"
        "                           or auto)\n"
        "      --precision auto|fp32|tf32|bf16  GEMM operands on the GPU (auto)\n"
        "  -q, --quiet              no progress on stderr\n"
        "  -h, --help  -V, --version\n\n"
        "See mpa-adapt(1).  Exit status: 0 ok, 1 runtime error, 2 usage error.\n");
}

static void parse(int argc, char **argv, options *o)
{
    enum { O_CKPT = 256, O_MODEL, O_STUDENT, O_FREEZE, O_LEVELS, O_EMB, O_K, O_LIST, O_SAMPLES,
           O_SOURCE, O_TARGET, O_STEPS, O_BATCH, O_OPTIM, O_LR, O_WD, O_MOM, O_CW, O_SEED, O_LOG,
           O_SAVE, O_SCALES, O_MAXT, O_OUTDIR, O_PROTOS, O_LAMBDA, O_TEMP, O_ALPHA, O_BEVERY,
           O_BMOM, O_BOUT, O_DEVICE, O_PREC, O_FINETUNE, O_BBLR, O_HEAD, O_DMLP };
    static const struct option longs[] = {
        {"ckpt", 1, 0, O_CKPT},           {"model", 1, 0, O_MODEL},
        {"student", 0, 0, O_STUDENT},     {"freeze-backbone", 0, 0, O_FREEZE},
        {"levels", 1, 0, O_LEVELS},       {"emb-chans", 1, 0, O_EMB},
        {"num-classes", 1, 0, O_K},       {"list", 1, 0, O_LIST},
        {"samples", 1, 0, O_SAMPLES},     {"source", 1, 0, O_SOURCE},
        {"target", 1, 0, O_TARGET},       {"steps", 1, 0, O_STEPS},
        {"batch-size", 1, 0, O_BATCH},    {"optimizer", 1, 0, O_OPTIM},
        {"lr", 1, 0, O_LR},               {"weight-decay", 1, 0, O_WD},
        {"momentum", 1, 0, O_MOM},        {"class-weights", 1, 0, O_CW},
        {"seed", 1, 0, O_SEED},           {"log", 1, 0, O_LOG},
        {"save-every", 1, 0, O_SAVE},     {"scales", 1, 0, O_SCALES},
        {"max-thresh", 1, 0, O_MAXT},     {"out-dir", 1, 0, O_OUTDIR},
        {"protos", 1, 0, O_PROTOS},       {"lambda-proto", 1, 0, O_LAMBDA},
        {"proto-temp", 1, 0, O_TEMP},     {"proto-alpha", 1, 0, O_ALPHA},
        {"bank-every", 1, 0, O_BEVERY},   {"bank-momentum", 1, 0, O_BMOM},
        {"bank-out", 1, 0, O_BOUT},       {"device", 1, 0, O_DEVICE},
        {"finetune", 0, 0, O_FINETUNE},   {"backbone-lr-mult", 1, 0, O_BBLR},
        {"precision", 1, 0, O_PREC},      {"head", 1, 0, O_HEAD},
        {"dmlp-blocks", 1, 0, O_DMLP},
        {"output", 1, 0, 'o'},            {"quiet", 0, 0, 'q'},
        {"help", 0, 0, 'h'},              {"version", 0, 0, 'V'},
        {0, 0, 0, 0}};
    *o = (options){.cmd = argv[0], .emb_chans = 128, .batch = 8, .bank_every = 100,
                   .steps = 200, .lr = 1e-3, .backbone_lr_mult = 0.1, .wd = 0.01,
                   .momentum = 0.9, .max_thresh = 0.9,
                   .lambda_proto = 0.001, .temp = 20, .alpha = 0.9, .bank_momentum = 0.999,
                   .optim = SEG_ADAMW, .device = NULL, .precision = "auto", .nscales = 5,
                   .scales = {0.5, 0.75, 1, 1.25, 1.5}};
    int c;
    while ((c = getopt_long(argc, argv, "o:qhV", longs, NULL)) != -1) {
        switch (c) {
        case O_CKPT: o->ckpt = optarg; break;
        case O_MODEL: o->model = optarg; break;
        case O_STUDENT: o->student = true; break;
        case O_FREEZE: o->finetune = false; break;
        case O_FINETUNE: o->finetune = true; break;
        case O_BBLR: o->backbone_lr_mult = cli_double("--backbone-lr-mult", optarg, 0, 1e6); break;
        case O_LEVELS: o->levels = optarg; break;
        case O_EMB: o->emb_chans = (int)cli_long("--emb-chans", optarg, 1, 4096); break;
        case O_HEAD: o->head = optarg; break;
        case O_DMLP:
            o->dmlp_blocks = (int)cli_long("--dmlp-blocks", optarg, 1, SEG_MAX_DMLP_BLOCKS);
            break;
        case O_K:
            o->num_classes = (int)cli_long("--num-classes", optarg, 1, SEG_MAX_CLASSES);
            break;
        case O_LIST: o->list = optarg; break;
        case O_SAMPLES: o->samples = optarg; break;
        case O_SOURCE: o->source = optarg; break;
        case O_TARGET: o->target = optarg; break;
        case O_STEPS: o->steps = cli_long("--steps", optarg, 0, 100000000); break;
        case O_BATCH: o->batch = (int)cli_long("--batch-size", optarg, 1, 4096); break;
        case O_OPTIM:
            if (!strcmp(optarg, "adamw"))
                o->optim = SEG_ADAMW;
            else if (!strcmp(optarg, "sgd"))
                o->optim = SEG_SGD;
            else
                cli_usage("--optimizer: '%s' is not adamw or sgd", optarg);
            break;
        case O_LR: o->lr = cli_double("--lr", optarg, 0, 100); break;
        case O_WD: o->wd = cli_double("--weight-decay", optarg, 0, 100); break;
        case O_MOM: o->momentum = cli_double("--momentum", optarg, 0, 1); break;
        case O_CW: o->class_weights = optarg; break;
        case O_SEED: o->seed = (uint64_t)cli_long("--seed", optarg, 0, 1L << 53); break;
        case O_LOG: o->log = optarg; break;
        case O_SAVE: o->save_every = cli_long("--save-every", optarg, 1, 100000000); break;
        case O_SCALES:
            o->nscales = cli_doubles("--scales", optarg, o->scales, MAX_SCALES, 0.05, 8);
            break;
        case O_MAXT: o->max_thresh = cli_double("--max-thresh", optarg, 0, 1); break;
        case O_OUTDIR: o->out_dir = optarg; break;
        case O_PROTOS: o->protos = optarg; break;
        case O_LAMBDA: o->lambda_proto = cli_double("--lambda-proto", optarg, 0, 1e6); break;
        case O_TEMP: o->temp = cli_double("--proto-temp", optarg, 1e-3, 1e6); break;
        case O_ALPHA: o->alpha = cli_double("--proto-alpha", optarg, 0, 1); break;
        case O_BEVERY: o->bank_every = (int)cli_long("--bank-every", optarg, 1, 100000000); break;
        case O_BMOM: o->bank_momentum = cli_double("--bank-momentum", optarg, 0, 1); break;
        case O_BOUT: o->bank_out = optarg; break;
        case O_DEVICE: o->device = optarg; break;
        case O_PREC: o->precision = optarg; break;
        case 'o': o->out = optarg; break;
        case 'q': o->quiet = true; break;
        case 'h': usage(); exit(0);
        case 'V': cli_print_version(); exit(0);
        default: cli_usage("unknown option");
        }
    }
    if (optind < argc)
        cli_usage("%s: unexpected argument '%s'", o->cmd, argv[optind]);
    gd_err err;
    if (!o->device && !(o->device = gd_backend_default_device(&err)))
        cli_usage("%s", err.msg);
    if (gd_backend_check_names(o->device, o->precision, &err))
        cli_usage("%s", err.msg);
    seg_head h = SEG_HEAD_PLAIN;
    if (o->head && seg_parse_head(o->head, &h, &err))
        cli_usage("--head: %s", err.msg);
    if (o->dmlp_blocks && h != SEG_HEAD_DMLP)
        cli_usage("--dmlp-blocks needs --head dmlp");
}

/* The backend by name (backend.h): bad names are usage errors (checked
 * by parse), a device that cannot be opened a runtime one. */
static gd_backend *pick_device(const options *o)
{
    gd_err err;
    gd_backend *be = gd_backend_open(o->device, o->precision, &err);
    if (!be)
        cli_fail("--device %s: %s", o->device, err.msg);
    return be;
}

/* The model, then the backend it ran on. */
static void free_model(seg_model *s)
{
    gd_backend *be = seg_model_backend(s);
    seg_model_free(s);
    gd_backend_close(be);
}

/* ---- the model --------------------------------------------------------- */

/* DINO's levels for a depth-12 ViT, 3,6,9,12, scaled: ceil(k d / 4). */
static void default_levels(seg_cfg *c, int depth)
{
    c->nlevels = 0;
    for (int k = 1; k <= 4; k++) {
        int l = (k * depth + 3) / 4;
        if (c->nlevels == 0 || c->levels[c->nlevels - 1] != l)
            c->levels[c->nlevels++] = l;
    }
}

/* The head a loaded model has must be the one --head and --dmlp-blocks
 * ask for, when they ask. */
static void check_head(const options *o, const seg_cfg *c)
{
    seg_head want = c->head;
    if (o->head && seg_parse_head(o->head, &want, NULL))
        return; /* parse() has refused it */
    bool blocks_differ = o->dmlp_blocks && o->dmlp_blocks != c->dmlp_blocks;
    if (want != c->head || blocks_differ) {
        char have[64] = "a plain head";
        if (c->head == SEG_HEAD_DMLP)
            snprintf(have, sizeof have, "a dmlp head (%d block%s)", c->dmlp_blocks,
                     c->dmlp_blocks == 1 ? "" : "s");
        cli_fail("%s: the model has %s; --head %s%s asks for another", o->model, have,
                 o->head ? o->head : seg_head_name(c->head), blocks_differ ? " --dmlp-blocks" : "");
    }
}

static seg_model *open_model(const options *o, bool allow_ckpt)
{
    gd_backend *be = pick_device(o);
    gd_err err;
    if (o->model) {
        if (o->ckpt)
            cli_usage("%s: --ckpt and --model exclude each other", o->cmd);
        msg *m = msg_read_one(o->model, NULL, &err);
        seg_model *s = m ? seg_model_load(be, m, o->batch, &err) : NULL;
        if (!s)
            cli_fail("%s: %s", o->model, err.msg);
        msg_free(m);
        check_head(o, seg_model_cfg(s));
        return s;
    }
    if (!allow_ckpt || !o->ckpt)
        cli_usage("%s: --model SEG.mpt is required%s", o->cmd,
                  allow_ckpt ? " (or --ckpt DINO.mpt)" : "");
    if (!o->num_classes)
        cli_usage("%s: --num-classes K is required with --ckpt", o->cmd);
    msg *m = msg_read_one(o->ckpt, "checkpoint", &err);
    if (!m)
        cli_fail("%s", err.msg);
    run_config rc;
    if (run_config_from_meta(&rc, &m->meta, &err))
        cli_fail("%s: %s", o->ckpt, err.msg);
    seg_cfg c = {.emb_chans = o->emb_chans, .num_classes = o->num_classes,
                 .role = o->student ? DINO_STUDENT : DINO_TEACHER};
    if (o->head && seg_parse_head(o->head, &c.head, &err))
        cli_usage("--head: %s", err.msg);
    if (c.head == SEG_HEAD_DMLP)
        c.dmlp_blocks = o->dmlp_blocks ? o->dmlp_blocks : 2;
    if (o->levels) {
        if (seg_parse_levels(&c, o->levels, rc.model.depth, &err))
            cli_usage("%s", err.msg);
    } else {
        default_levels(&c, rc.model.depth);
    }
    run_config_free(&rc);
    seg_model *s = seg_model_from_dino(be, m, &c, o->batch, o->seed, &err);
    if (!s)
        cli_fail("%s: %s", o->ckpt, err.msg);
    msg_free(m);
    return s;
}

static void save_model(seg_model *s, long step, const char *path)
{
    gd_err err;
    msg *m = seg_model_save(s, step, &err);
    if (!m || msg_write_file(path, &m, 1, &err))
        cli_fail("%s: %s", path, err.msg);
    msg_free(m);
}

static void load_set(seg_set *set, const seg_model *s, const char *list, const char *samples,
                     bool labels)
{
    gd_err err;
    int K = seg_model_cfg(s)->num_classes;
    if (list && seg_set_add_list(set, seg_model_run(s), list, labels, K, &err))
        cli_fail("%s", err.msg);
    if (samples && seg_set_add_samples(set, seg_model_run(s), samples, K, &err))
        cli_fail("%s", err.msg);
    if (set->n == 0)
        cli_fail("%s: no tiles", list ? list : samples ? samples : "input");
}

static FILE *open_out(const char *path)
{
    if (!path || !strcmp(path, "-"))
        return stdout;
    FILE *f = fopen(path, "w");
    if (!f)
        cli_fail("%s: %s", path, strerror(errno));
    return f;
}

static void close_out(FILE *f, const char *path)
{
    if (fflush(f) || ferror(f) || (f != stdout && fclose(f)))
        cli_fail("%s: write error", path ? path : "stdout");
}

/* ---- training (train-source, adapt) ----------------------------------------- */

/* Draws batches of tile indices: a fresh permutation per epoch, from the
 * stream (seed, domain, epoch). */
typedef struct sampler {
    size_t n, pos, *perm;
    uint64_t seed, domain, epoch;
} sampler;

static void sampler_init(sampler *sp, size_t n, uint64_t seed, uint64_t domain)
{
    *sp = (sampler){.n = n, .pos = n, .seed = seed, .domain = domain};
    if (!(sp->perm = malloc(n * sizeof *sp->perm)))
        cli_fail("out of memory");
}

static size_t sampler_next(sampler *sp)
{
    if (sp->pos == sp->n) {
        rng r;
        rng_init(&r, sp->seed, 0x5a3 + sp->domain, sp->epoch++, 0);
        for (size_t i = 0; i < sp->n; i++)
            sp->perm[i] = i;
        for (size_t i = sp->n - 1; i > 0; i--) {
            size_t j = (size_t)rng_below(&r, i + 1), t = sp->perm[i];
            sp->perm[i] = sp->perm[j], sp->perm[j] = t;
        }
        sp->pos = 0;
    }
    return sp->perm[sp->pos++];
}

/* A batch of n tiles of a set, gathered into contiguous host arrays. */
typedef struct batch {
    float *img;
    uint8_t *lab;
} batch;

static void gather(const seg_set *set, sampler *sp, int n, batch *b)
{
    size_t img = (size_t)set->C * set->S * set->S, px = (size_t)set->S * set->S;
    for (int i = 0; i < n; i++) {
        size_t k = sampler_next(sp);
        memcpy(b->img + i * img, set->img + k * img, img * sizeof(float));
        memcpy(b->lab + i * px, set->lab + k * px, px);
    }
}

static void batch_alloc(batch *b, const seg_set *set, int n)
{
    b->img = malloc((size_t)n * set->C * set->S * set->S * sizeof(float));
    b->lab = malloc((size_t)n * set->S * set->S);
    if (!b->img || !b->lab)
        cli_fail("out of memory");
}

static float *parse_class_weights(const options *o, int K)
{
    if (!o->class_weights)
        return NULL;
    double w[SEG_MAX_CLASSES + 1];
    int n = cli_doubles("--class-weights", o->class_weights, w, SEG_MAX_CLASSES + 1, 0, 1e6);
    if (n != K)
        cli_usage("--class-weights: %d weights for %d classes", n, K);
    float *f = malloc(K * sizeof *f);
    if (!f)
        cli_fail("out of memory");
    for (int k = 0; k < K; k++)
        f[k] = (float)w[k];
    return f;
}

/* The bank of adapt: prototypes [K, E] and which classes it has. */
typedef struct bank {
    float *p;
    uint8_t *present;
    double *sums, *counts; /* per-class batch sums since the last update */
} bank;

static void write_protos(const char *path, const float *p, const uint8_t *present, int K, int E,
                         const float *const *dom, const uint8_t *const *dom_present,
                         const char *what, long updates)
{
    gd_err err;
    msg *m = msg_new("prototypes");
    bool ok = m && msg_add_tensor_copy(m, "prototypes", DT_F4, 2, (int64_t[]){K, E}, p) &&
              msg_add_tensor_copy(m, "present", DT_U1, 1, (int64_t[]){K}, present);
    static const char *names[] = {"source", "target"};
    for (int d = 0; ok && dom && d < 2; d++) {
        char nm[32];
        snprintf(nm, sizeof nm, "%s", names[d]);
        ok = msg_add_tensor_copy(m, nm, DT_F4, 2, (int64_t[]){K, E}, dom[d]) != NULL;
        snprintf(nm, sizeof nm, "%s_present", names[d]);
        ok = ok && msg_add_tensor_copy(m, nm, DT_U1, 1, (int64_t[]){K}, dom_present[d]);
    }
    ok = ok && value_set_str(&m->meta, "tool", "mpa-adapt") &&
         value_set_str(&m->meta, "version", GEODINO_VERSION) &&
         value_set_strs(&m->meta, "domains", names, 2) && value_set_str(&m->meta, "what", what) &&
         value_set_int(&m->meta, "bank_updates", updates);
    if (!ok)
        cli_fail("out of memory");
    if (msg_write_file(path, &m, 1, &err))
        cli_fail("%s", err.msg);
    msg_free(m);
}

static void read_bank(bank *bk, const char *path, int K, int E)
{
    gd_err err;
    msg *m = msg_read_one(path, "prototypes", &err);
    const tensor *p = m ? msg_require_tensor(m, "prototypes", DT_F4, 2, &err) : NULL;
    const tensor *pr = p ? msg_require_tensor(m, "present", DT_U1, 1, &err) : NULL;
    if (!pr)
        cli_fail("%s: %s", path, err.msg);
    if (p->shape[0] != K || p->shape[1] != E || pr->shape[0] != K)
        cli_fail("%s: prototypes are [%lld, %lld], the model needs [%d, %d]", path,
                 (long long)p->shape[0], (long long)p->shape[1], K, E);
    memcpy(bk->p, p->data, (size_t)K * E * sizeof(float));
    memcpy(bk->present, pr->data, K);
    msg_free(m);
}

typedef struct train_ctx {
    const options *o;
    seg_model *s;
    const seg_set *src, *tgt; /* tgt NULL: train-source */
    const float *cw;
    bank *bk;                 /* adapt only */
    long bank_updates;
} train_ctx;

static void log_step(FILE *lf, long it, double lr, const seg_losses *ls, const seg_losses *lt,
                     bool adapt)
{
    fprintf(lf, "{\"step\": %ld, \"lr\": ", it);
    json_write_number(lf, lr);
    fputs(", \"ce_source\": ", lf);
    json_write_number(lf, ls->ce);
    if (adapt) {
        fputs(", \"ce_target\": ", lf);
        json_write_number(lf, lt->ce);
        fputs(", \"proto_source\": ", lf);
        json_write_number(lf, ls->proto);
        fputs(", \"proto_target\": ", lf);
        json_write_number(lf, lt->proto);
    }
    fputs("}\n", lf);
}

static void train(train_ctx *c)
{
    const options *o = c->o;
    seg_model *s = c->s;
    int n = o->batch < seg_model_batch(s) ? o->batch : seg_model_batch(s);
    int K = seg_model_cfg(s)->num_classes, E = seg_model_cfg(s)->emb_chans;
    sampler ss, st;
    batch bs, bt;
    sampler_init(&ss, c->src->n, o->seed, 0);
    batch_alloc(&bs, c->src, n);
    if (c->tgt) {
        sampler_init(&st, c->tgt->n, o->seed, 1);
        batch_alloc(&bt, c->tgt, n);
    }
    seg_model_set_finetune(s, o->finetune, o->backbone_lr_mult);
    FILE *lf = o->log ? open_out(o->log) : NULL;
    bool progress = cli_progress_enabled(o->quiet, false);
    gd_err err;
    for (long it = 0; it < o->steps; it++) {
        double lr = seg_poly_lr(o->lr, it, o->steps);
        seg_losses ls, lt = {0};
        seg_loss_opts lo = {.class_weights = c->cw, .weight = 1, .temp = o->temp,
                            .alpha = o->alpha};
        if (c->bk) {
            lo.protos = c->bk->p, lo.lambda_proto = o->lambda_proto;
            lo.agree_sums = c->bk->sums, lo.agree_counts = c->bk->counts;
        }
        seg_zero_grad(s);
        gather(c->src, &ss, n, &bs);
        if (seg_batch_loss(s, bs.img, bs.lab, n, c->src->S, &lo, true, &ls, &err))
            cli_fail("step %ld: source: %s", it, err.msg);
        if (c->tgt) {
            gather(c->tgt, &st, n, &bt);
            if (seg_batch_loss(s, bt.img, bt.lab, n, c->tgt->S, &lo, true, &lt, &err))
                cli_fail("step %ld: target: %s", it, err.msg);
        }
        if (seg_step(s, o->optim, lr, o->wd, o->momentum, &err))
            cli_fail("step %ld: %s", it, err.msg);
        if (c->bk && (it + 1) % o->bank_every == 0) {
            mpa_bank_update(c->bk->p, c->bk->present, c->bk->sums, c->bk->counts, K, E,
                            o->bank_momentum);
            memset(c->bk->sums, 0, (size_t)K * E * sizeof(double));
            memset(c->bk->counts, 0, K * sizeof(double));
            c->bank_updates++;
        }
        if (lf)
            log_step(lf, it, lr, &ls, &lt, c->tgt != NULL);
        if (progress)
            fprintf(stderr, "\rmpa-adapt %s: %ld/%ld ce %.4f", o->cmd, it + 1, o->steps, ls.ce);
        if (o->save_every && (it + 1) % o->save_every == 0 && it + 1 < o->steps)
            save_model(s, it + 1, o->out);
    }
    if (progress)
        fputc('\n', stderr);
    if (lf)
        close_out(lf, o->log);
    free(ss.perm), free(bs.img), free(bs.lab);
    if (c->tgt)
        free(st.perm), free(bt.img), free(bt.lab);
}

static int cmd_train_source(const options *o)
{
    if (!o->out)
        cli_usage("train-source: -o SEG.mpt is required");
    if (!o->list && !o->samples)
        cli_usage("train-source: give --list FILE (\"image label\" lines) and/or --samples FILE");
    seg_model *s = open_model(o, true);
    seg_set src = {0};
    load_set(&src, s, o->list, o->samples, true);
    float *cw = parse_class_weights(o, seg_model_cfg(s)->num_classes);
    train_ctx c = {.o = o, .s = s, .src = &src, .cw = cw};
    train(&c);
    save_model(s, o->steps, o->out);
    seg_set_free(&src);
    free(cw);
    free_model(s);
    return 0;
}

static int cmd_adapt(const options *o)
{
    if (!o->out)
        cli_usage("adapt: -o SEG.mpt is required");
    if (!o->source || !o->target)
        cli_usage("adapt: --source FILE and --target FILE are required");
    if (o->lambda_proto > 0 && !o->protos)
        cli_usage("adapt: --protos FILE is required (or --lambda-proto 0)");
    seg_model *s = open_model(o, false);
    int K = seg_model_cfg(s)->num_classes, E = seg_model_cfg(s)->emb_chans;
    seg_set src = {0}, tgt = {0};
    load_set(&src, s, o->source, NULL, true);
    load_set(&tgt, s, o->target, NULL, true);
    float *cw = parse_class_weights(o, K);
    bank bk = {.p = calloc((size_t)K * E, sizeof(float)), .present = calloc(K, 1),
               .sums = calloc((size_t)K * E, sizeof(double)), .counts = calloc(K, sizeof(double))};
    if (!bk.p || !bk.present || !bk.sums || !bk.counts)
        cli_fail("out of memory");
    if (o->protos)
        read_bank(&bk, o->protos, K, E);
    train_ctx c = {.o = o, .s = s, .src = &src, .tgt = &tgt, .cw = cw,
                   .bk = o->lambda_proto > 0 ? &bk : NULL};
    train(&c);
    save_model(s, o->steps, o->out);
    if (o->bank_out)
        write_protos(o->bank_out, bk.p, bk.present, K, E, NULL, NULL, "bank", c.bank_updates);
    seg_set_free(&src), seg_set_free(&tgt);
    free(cw), free(bk.p), free(bk.present), free(bk.sums), free(bk.counts);
    free_model(s);
    return 0;
}

/* ---- pseudo-label -------------------------------------------------------------- */

/* Side of a scaled tile: the multiple of the patch nearest s S (at least one patch). */
static int scaled_size(int S, double s, int patch)
{
    int n = (int)lround(S * s / patch);
    return (n < 1 ? 1 : n) * patch;
}

/* Averaged class probabilities of tiles [first, first + n) into probs
 * [n, S, S, K]. */
static void predict_avg(seg_model *s, const seg_set *set, size_t first, int n, const double *scales,
                        int nscales, float *probs, float *tmp)
{
    gd_err err;
    int K = seg_model_cfg(s)->num_classes, p = seg_model_run(s)->model.patch, S = set->S;
    size_t len = (size_t)n * S * S * K, img = (size_t)set->C * S * S;
    memset(probs, 0, len * sizeof *probs);
    for (int k = 0; k < nscales; k++) {
        if (seg_predict(s, set->img + first * img, n, S, scaled_size(S, scales[k], p), tmp, &err))
            cli_fail("%s: %s", set->names[first], err.msg);
        for (size_t i = 0; i < len; i++)
            probs[i] += tmp[i] / nscales;
    }
}

static const char *base_name(const char *path)
{
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static int cmd_pseudo_label(const options *o)
{
    if (!o->list || !o->out_dir)
        cli_usage("pseudo-label: --list FILE and --out-dir DIR are required");
    seg_model *s = open_model(o, false);
    int K = seg_model_cfg(s)->num_classes, B = seg_model_batch(s);
    seg_set set = {0};
    load_set(&set, s, o->list, NULL, false);
    if (mkdir(o->out_dir, 0777) && errno != EEXIST)
        cli_fail("%s: %s", o->out_dir, strerror(errno));
    int S = set.S;
    size_t px = (size_t)S * S;
    float *probs = malloc((size_t)B * px * K * sizeof(float));
    float *tmp = malloc((size_t)B * px * K * sizeof(float));
    float *conf = malloc(set.n * px * sizeof(float));
    uint8_t *pred = malloc(set.n * px), *out = malloc(px);
    double thresh[SEG_MAX_CLASSES];
    size_t count[SEG_MAX_CLASSES], kept[SEG_MAX_CLASSES] = {0};
    if (!probs || !tmp || !conf || !pred || !out)
        cli_fail("out of memory");
    for (size_t first = 0; first < set.n; first += B) {
        int n = set.n - first < (size_t)B ? (int)(set.n - first) : B;
        predict_avg(s, &set, first, n, o->scales, o->nscales, probs, tmp);
        for (size_t i = 0; i < (size_t)n * px; i++) {
            int best = seg_argmax(probs + i * K, K);
            pred[first * px + i] = (uint8_t)best;
            conf[first * px + i] = probs[i * K + best];
        }
    }
    if (mpa_thresholds(conf, pred, set.n * px, K, o->max_thresh, thresh, count))
        cli_fail("out of memory");
    char path[4096];
    snprintf(path, sizeof path, "%s/list.txt", o->out_dir);
    FILE *lf = open_out(path);
    gd_err err;
    for (size_t i = 0; i < set.n; i++) {
        mpa_apply_thresholds(conf + i * px, pred + i * px, px, thresh, SEG_IGNORE, out);
        for (size_t j = 0; j < px; j++)
            kept[pred[i * px + j]] += out[j] != SEG_IGNORE;
        char lab[4096];
        snprintf(lab, sizeof lab, "%s/%06zu_%s", o->out_dir, i, base_name(set.names[i]));
        if (raster_write(lab, out, RT_U8, 1, S, S, &err))
            cli_fail("%s", err.msg);
        fprintf(lf, "%s %s\n", set.names[i], lab);
    }
    close_out(lf, path);
    FILE *f = open_out(o->out);
    size_t total = set.n * px, nkept = 0;
    fprintf(f, "{\"tiles\": %zu, \"pixels\": %zu, \"scales\": [", set.n, total);
    for (int k = 0; k < o->nscales; k++)
        fprintf(f, "%s%g", k ? ", " : "", o->scales[k]);
    fprintf(f, "], \"max_thresh\": %g, \"list\": ", o->max_thresh);
    json_write_string(f, path);
    fputs(", \"thresholds\": [", f);
    for (int k = 0; k < K; k++) {
        fputs(k ? ", " : "", f);
        json_write_number(f, thresh[k]);
        nkept += kept[k];
    }
    fputs("], \"predicted\": [", f);
    for (int k = 0; k < K; k++)
        fprintf(f, "%s%zu", k ? ", " : "", count[k]);
    fputs("], \"kept\": [", f);
    for (int k = 0; k < K; k++)
        fprintf(f, "%s%zu", k ? ", " : "", kept[k]);
    fputs("], \"coverage\": ", f);
    json_write_number(f, total ? (double)nkept / total : 0);
    fputs("}\n", f);
    close_out(f, o->out);
    free(probs), free(tmp), free(conf), free(pred), free(out);
    seg_set_free(&set);
    free_model(s);
    return 0;
}

/* ---- prototypes ------------------------------------------------------------------ */

/* One domain's prototypes: per image, the class means of the fused
 * features over tokens whose label equals the prediction. */
static void domain_protos(seg_model *s, const seg_set *set, mpa_domain *d)
{
    gd_err err;
    int K = seg_model_cfg(s)->num_classes, E = seg_model_cfg(s)->emb_chans, B = seg_model_batch(s);
    int p = seg_model_run(s)->model.patch, S = set->S, np = (S / p) * (S / p);
    uint8_t *pred = malloc((size_t)B * np), *tok = malloc(np);
    float *sums = malloc((size_t)K * E * sizeof(float)), *counts = malloc(K * sizeof(float));
    float *tmp = malloc((size_t)B * S * S * K * sizeof(float));
    if (!pred || !tok || !sums || !counts || !tmp || mpa_domain_init(d, K, E))
        cli_fail("out of memory");
    size_t img = (size_t)set->C * S * S;
    for (size_t first = 0; first < set->n; first += B) {
        int n = set->n - first < (size_t)B ? (int)(set->n - first) : B;
        if (seg_predict(s, set->img + first * img, n, S, S, tmp, &err) ||
            seg_token_outputs(s, n, S, NULL, pred, &err))
            cli_fail("%s: %s", set->names[first], err.msg);
        for (int i = 0; i < n; i++) {
            seg_labels_to_grid(set->lab + (first + i) * S * S, S, p, tok);
            for (int t = 0; t < np; t++)
                if (tok[t] != pred[(size_t)i * np + t])
                    tok[t] = SEG_IGNORE;
            if (seg_class_sums(s, i, S, tok, sums, counts, &err))
                cli_fail("%s", err.msg);
            mpa_domain_add_image(d, sums, counts);
        }
    }
    free(pred), free(tok), free(sums), free(counts), free(tmp);
}

static int cmd_prototypes(const options *o)
{
    if (!o->source || !o->target || !o->out)
        cli_usage("prototypes: --source FILE, --target FILE and -o FILE are required");
    seg_model *s = open_model(o, false);
    int K = seg_model_cfg(s)->num_classes, E = seg_model_cfg(s)->emb_chans;
    float *dp[2], *mutual = malloc((size_t)K * E * sizeof(float));
    uint8_t *pp[2], *present = malloc(K);
    static const char *names[] = {"source", "target"};
    for (int d = 0; d < 2; d++) {
        seg_set set = {0};
        load_set(&set, s, d ? o->target : o->source, NULL, true);
        mpa_domain dom;
        domain_protos(s, &set, &dom);
        dp[d] = malloc((size_t)K * E * sizeof(float));
        pp[d] = malloc(K);
        if (!dp[d] || !pp[d])
            cli_fail("out of memory");
        mpa_domain_means(&dom, dp[d], pp[d]);
        mpa_domain_free(&dom);
        seg_set_free(&set);
    }
    if (!mutual || !present)
        cli_fail("out of memory");
    for (int k = 0; k < K; k++)
        for (int d = 0; d < 2; d++)
            if (!pp[d][k])
                cli_warn("class %d is missing from the %s domain (no token where label and "
                         "prediction agree)%s", k, names[d],
                         pp[1 - d][k] ? ": it takes the other domain's prototype" : "");
    mpa_mutual(dp[0], pp[0], dp[1], pp[1], K, E, mutual, present);
    write_protos(o->out, mutual, present, K, E, (const float *const *)dp,
                 (const uint8_t *const *)pp, "mutual", 0);
    for (int d = 0; d < 2; d++)
        free(dp[d]), free(pp[d]);
    free(mutual), free(present);
    free_model(s);
    return 0;
}

/* ---- eval ------------------------------------------------------------------------- */

static int cmd_eval(const options *o)
{
    if (!o->list)
        cli_usage("eval: --list FILE (\"image label\" lines) is required");
    seg_model *s = open_model(o, false);
    int K = seg_model_cfg(s)->num_classes, B = seg_model_batch(s);
    seg_set set = {0};
    load_set(&set, s, o->list, NULL, true);
    int S = set.S;
    size_t px = (size_t)S * S;
    float *probs = malloc((size_t)B * px * K * sizeof(float));
    uint8_t *pred = malloc((size_t)B * px);
    uint64_t *conf = calloc((size_t)K * K, sizeof *conf);
    double iou[SEG_MAX_CLASSES], miou, acc;
    if (!probs || !pred || !conf)
        cli_fail("out of memory");
    gd_err err;
    for (size_t first = 0; first < set.n; first += B) {
        int n = set.n - first < (size_t)B ? (int)(set.n - first) : B;
        if (seg_predict(s, set.img + first * set.C * px, n, S, S, probs, &err))
            cli_fail("%s: %s", set.names[first], err.msg);
        for (size_t i = 0; i < (size_t)n * px; i++)
            pred[i] = (uint8_t)seg_argmax(probs + i * K, K);
        mpa_confusion_add(conf, set.lab + first * px, pred, (size_t)n * px, K, SEG_IGNORE);
    }
    mpa_iou(conf, K, iou, &miou, &acc);
    FILE *f = open_out(o->out);
    fprintf(f, "{\"tiles\": %zu, \"miou\": ", set.n);
    json_write_number(f, miou);
    fputs(", \"pixel_acc\": ", f);
    json_write_number(f, acc);
    fputs(", \"iou\": [", f);
    for (int k = 0; k < K; k++) {
        fputs(k ? ", " : "", f);
        json_write_number(f, iou[k]);
    }
    fputs("], \"confusion\": [", f);
    for (int t = 0; t < K; t++) {
        fputs(t ? ", [" : "[", f);
        for (int p = 0; p < K; p++)
            fprintf(f, "%s%llu", p ? ", " : "", (unsigned long long)conf[(size_t)t * K + p]);
        fputs("]", f);
    }
    fputs("]}\n", f);
    close_out(f, o->out);
    free(probs), free(pred), free(conf);
    seg_set_free(&set);
    free_model(s);
    return 0;
}

int main(int argc, char **argv)
{
    cli_init("mpa-adapt");
    if (argc < 2)
        cli_usage("a command is required (train-source, pseudo-label, prototypes, adapt, eval)");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        usage();
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        cli_print_version();
        return 0;
    }
    options o;
    parse(argc - 1, argv + 1, &o);
    if (!strcmp(cmd, "train-source"))
        return cmd_train_source(&o);
    if (!strcmp(cmd, "pseudo-label"))
        return cmd_pseudo_label(&o);
    if (!strcmp(cmd, "prototypes"))
        return cmd_prototypes(&o);
    if (!strcmp(cmd, "adapt"))
        return cmd_adapt(&o);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(&o);
    cli_usage("unknown command '%s' (train-source, pseudo-label, prototypes, adapt, eval)", cmd);
}
