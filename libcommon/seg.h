/* seg.h: semantic segmentation on a DINO backbone, on the backend seam.
 *
 * The model (mpa-adapt's): the patch tokens after blocks `levels` of a
 * dino-step ViT (teacher or student weights; frozen, or fine-tuned with
 * seg_model_set_finetune), each through the
 * backbone's final LayerNorm (as DINO's get_intermediate_layers), projected
 * by its own linear layer to emb_chans and summed (every level of a plain
 * ViT is on the same token grid, so "resized to the finest level" is the
 * identity), then a linear prediction to K classes on the token grid and a
 * bilinear upsampling (align_corners = False) to the input size.  The
 * summed emb_chans map is the "fused" feature of MPA's prototypes.
 *
 * Tiles are square, S x S with S a multiple of the patch; the backbone
 * sees them two "global views" at a time (dino_trainer_tokens), one
 * trainer per tile size.
 *
 * The `segmodel` message (a checkpoint of this model):
 *   tensors  backbone/<path>   the backbone part of the chosen DINO role
 *            decoder/proj/<l>/weight [E, D], decoder/proj/<l>/bias [E]
 *            decoder/pred/weight [K, E], decoder/pred/bias [K]   (<f4)
 *            with the dmlp head, per block i (E channels, hidden 4E):
 *            decoder/dmlp/<i>/ln1/{weight,bias} [E], dw/weight [E, 9],
 *            dw/bias [E], offset/weight [3, E], offset/bias [3],
 *            fc/weight [E, E], fc/bias [E], ln2/{weight,bias} [E],
 *            fc1/weight [4E, E], fc1/bias [4E], fc2/weight [E, 4E],
 *            fc2/bias [E]
 *   meta     tool, version, config + stats (dino-step's run config),
 *            seg (map: levels, emb_chans, num_classes, which, ignore_index,
 *            step, head "plain"|"dmlp", dmlp_blocks), and what the tool
 *            adds.  A checkpoint without seg/head is plain.
 *
 * The dmlp head (Trans4PASS's deformable MLP block, simplified; LayerNorm
 * eps 1e-6), on each map [g, g, E] of the fused features x:
 *   h  = LN1(x)
 *   om = offset(dwconv3x3(h))          [g, g, 3]: dy, dx, modulation
 *   x1 = x + fc(deform_sample(h, om))  offsets clamped to +-g/4, m = 2 sigmoid
 *   y  = x1 + fc2(GELU(fc1(LN2(x1))))
 * The offset layer starts at zero (sampling at the position itself, m = 1).
 * The features of the prototypes are the last block's output. */
#ifndef GD_SEG_H
#define GD_SEG_H

#include <stdbool.h>
#include <stdint.h>

#include "dino.h"
#include "err.h"
#include "msg.h"
#include "ops.h"
#include "trainer.h"

#define SEG_IGNORE 255
#define SEG_MAX_LEVELS 16
#define SEG_MAX_CLASSES 254

#define SEG_MAX_DMLP_BLOCKS 16
#define SEG_DMLP_MLP_RATIO 4

/* The decoder head: the plain one, or deformable MLP blocks on the fused
 * map before the prediction layer (Trans4PASS's DMLP). */
typedef enum { SEG_HEAD_PLAIN = 0, SEG_HEAD_DMLP = 1 } seg_head;

typedef struct seg_cfg {
    int levels[SEG_MAX_LEVELS], nlevels; /* 1-based block numbers */
    int emb_chans, num_classes;
    dino_role role;                      /* DINO_TEACHER or DINO_STUDENT */
    seg_head head;
    int dmlp_blocks;                     /* with SEG_HEAD_DMLP: 1..SEG_MAX_DMLP_BLOCKS */
} seg_cfg;

/* "plain" or "dmlp" */
const char *seg_head_name(seg_head h);
int seg_parse_head(const char *name, seg_head *h, gd_err *err);

/* Parses "3,6,9,12" into c->levels; every level must be in 1..depth. */
int seg_parse_levels(seg_cfg *c, const char *spec, int depth, gd_err *err);

typedef struct seg_model seg_model;

/* A fresh decoder (torch nn.Linear's default initialisation, seeded) on
 * the backbone of a dino-step checkpoint.  batch: images per pass (at
 * most; rounded up to even). */
seg_model *seg_model_from_dino(gd_backend *be, const msg *ckpt, const seg_cfg *c, int batch,
                               uint64_t seed, gd_err *err);
/* A model from a segmodel message. */
seg_model *seg_model_load(gd_backend *be, const msg *m, int batch, gd_err *err);
/* The segmodel message of the current weights; step goes into meta. */
msg *seg_model_save(seg_model *s, long step, gd_err *err);
void seg_model_free(seg_model *s);

const seg_cfg *seg_model_cfg(const seg_model *s);
const run_config *seg_model_run(const seg_model *s);
int seg_model_batch(const seg_model *s);
/* The backend it runs on (the caller's: seg_model_free leaves it open). */
gd_backend *seg_model_backend(const seg_model *s);
/* The decoder's device buffers (weights, gradient; n floats), for tests. */
float *seg_model_params(seg_model *s, size_t *n);
float *seg_model_grads(seg_model *s, size_t *n);
/* A backbone tensor's device weights and gradient in the trainer of tile
 * size S, for tests. */
int seg_backbone_tensor(seg_model *s, int S, const char *name, float **param, float **grad,
                        size_t *n, gd_err *err);

/* ---- data ---------------------------------------------------------- */

/* Tiles of one size in host memory: images normalized with the run's
 * stats ([n, C, S, S]), labels [n, S, S] (255 = ignore) or NULL. */
typedef struct seg_set {
    size_t n;
    int C, S;
    float *img;
    uint8_t *lab;
    char **names;   /* image path (or sample name) per tile */
    size_t cap;
} seg_set;

/* Appends the tiles of a list file, "image [label]" per line: with
 * labels, the label rasters are required (and checked); without, a label
 * column is ignored and every pixel is 255. */
int seg_set_add_list(seg_set *s, const run_config *rc, const char *list, bool labels, int K,
                     gd_err *err);
/* Appends `sample` messages (paste-aug's: image [C, H, W] in raw units,
 * label [H, W] |u1) read from path ("-": stdin). */
int seg_set_add_samples(seg_set *s, const run_config *rc, const char *path, int K, gd_err *err);
void seg_set_free(seg_set *s);

/* ---- passes --------------------------------------------------------- */

/* The first index of the largest of p[0..K). */
int seg_argmax(const float *p, int K);

/* Label at each token: the pixel at the centre of its patch. */
void seg_labels_to_grid(const uint8_t *lab, int S, int patch, uint8_t *out);

typedef struct seg_loss_opts {
    const float *class_weights;  /* host [K] or NULL */
    const float *protos;         /* host [K, E] for the prototype loss, or NULL */
    double lambda_proto, temp, alpha;
    double weight;               /* multiplies this batch's loss and gradient (1) */
    /* when not NULL: per-class sums [K, E] and counts [K] of the fused
     * features where the token's label equals its prediction (added) */
    double *agree_sums, *agree_counts;
} seg_loss_opts;

typedef struct seg_losses {
    double ce, proto;            /* means over the batch's labelled pixels / tokens */
    double ce_pixels, proto_tokens;
} seg_losses;

/* Loss of n <= batch tiles [n, C, S, S] against labels [n, S, S]; with
 * grads, adds weight * its gradient to the decoder's gradient. */
int seg_batch_loss(seg_model *s, const float *img, const uint8_t *lab, int n, int S,
                   const seg_loss_opts *o, bool grads, seg_losses *out, gd_err *err);

/* Class probabilities [n, S, S, K] of n tiles [n, C, S, S], the input
 * resized (bilinearly) to S2 x S2 (S2 a multiple of the patch) and the
 * probabilities resized back to S x S. */
int seg_predict(seg_model *s, const float *img, int n, int S, int S2, float *probs, gd_err *err);

/* After a pass on n tiles of size S: fused features [n, np, E] and the
 * token-grid predictions (argmax of the logits) [n, np]; either may be
 * NULL. */
int seg_token_outputs(seg_model *s, int n, int S, float *fused, uint8_t *pred, gd_err *err);

/* Per-class sums [K, E] and counts [K] of fused features of one tile
 * after a pass (tile index i), over tokens whose grid label (tok [np]) is
 * a class; overwrite. */
int seg_class_sums(seg_model *s, int i, int S, const uint8_t *tok, float *sums, float *counts,
                   gd_err *err);

/* ---- optimisation ---------------------------------------------------- */

typedef enum { SEG_ADAMW, SEG_SGD } seg_optim;

/* Fine-tuning: the backbone trains too, with lr x backbone_lr_mult, in
 * the trainer of one tile size (the optimizer state of the DINO
 * checkpoint is not carried over).  Off by default (frozen backbone). */
void seg_model_set_finetune(seg_model *s, bool on, double backbone_lr_mult);

void seg_zero_grad(seg_model *s);
/* One optimizer step on the decoder (weight decay on weights only):
 * AdamW (beta 0.9, 0.999, eps 1e-8) or SGD with momentum. */
int seg_step(seg_model *s, seg_optim opt, double lr, double wd, double momentum, gd_err *err);
/* The poly schedule: base (1 - it / total)^0.9. */
double seg_poly_lr(double base, long it, long total);

#endif
