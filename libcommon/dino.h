/* dino.h: the DINO model (ViT backbone + DINO head), its loss and its
 * training step, written once against the backend seam (kernels/ops.h).
 *
 * Parameters live in one device buffer per role (student, teacher,
 * gradient, Adam moments); a table names every tensor exactly as the DINO
 * reference code does, with '/' for '.' ("backbone/blocks/3/attn/qkv/
 * weight", "head/mlp/0/weight", "head/last_layer/weight_v"), which is also
 * its name in checkpoints (FORMAT.md: student/<path>, teacher/<path>,
 * adam_m/<path>, adam_v/<path>, center).
 *
 *     dino_trainer *t = dino_trainer_new(be, &model, &train, B, nviews, res, seed, &err);
 *     dino_trainer_init(t, seed);            (or dino_trainer_load(t, ckpt, ...))
 *     for (it...) dino_trainer_step(t, views, it, &stats, &err);
 *
 * views[v] is a device buffer [B, in_chans, res[v], res[v]]; the first
 * two are the global crops (the teacher sees only those).  Consecutive
 * views of equal size go through the backbone together, as DINO's
 * MultiCropWrapper does. */
#ifndef GD_DINO_H
#define GD_DINO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "err.h"
#include "msg.h"
#include "ops.h"

typedef struct dino_model_cfg {
    int img_size;       /* native size: the position embedding grid is img_size / patch */
    int patch;          /* 8 or 16 */
    int in_chans;       /* bands */
    int embed_dim, depth, num_heads, mlp_ratio;
    float ln_eps;         /* 1e-6 */
    float drop_path_rate; /* stochastic depth at the last block (student only) */
    int out_dim, hidden_dim, bottleneck_dim; /* head: 65536, 2048, 256 */
    bool norm_last_layer;                    /* weight_g fixed to 1 */
} dino_model_cfg;

/* DINO's vit_tiny / vit_small / vit_base with its head defaults; -1 when
 * the name is unknown. */
int dino_model_preset(dino_model_cfg *c, const char *arch, int patch, int in_chans);
int dino_model_check(const dino_model_cfg *c, gd_err *err);

typedef struct dino_train_cfg {
    int batch_size_total;   /* lr is scaled by batch_size_total / 256 */
    int epochs, niter_per_epoch, warmup_epochs;
    double lr, min_lr;      /* lr before scaling, as --lr */
    double weight_decay, weight_decay_end;
    double momentum_teacher;
    double warmup_teacher_temp, teacher_temp;
    int warmup_teacher_temp_epochs;
    double student_temp, center_momentum;
    double clip_grad;       /* per tensor; 0: off */
    int freeze_last_layer;  /* epochs */
    double beta1, beta2, adam_eps;
} dino_train_cfg;

void dino_train_defaults(dino_train_cfg *c); /* DINO main_dino.py defaults */

/* The per-iteration schedule values, as DINO's utils.cosine_scheduler and
 * its teacher temperature (per epoch) compute them. */
typedef struct dino_sched {
    double lr, weight_decay, momentum, teacher_temp;
} dino_sched;
double dino_cosine(double base, double final, int epochs, int niter, int warmup_epochs,
                   double start_warmup, long it);
dino_sched dino_schedule(const dino_train_cfg *c, long it);

/* One named parameter tensor. */
typedef struct dino_param {
    char name[96];     /* "backbone/blocks/0/attn/qkv/weight" (no role prefix) */
    int ndim;
    int64_t shape[4];
    size_t off, n;     /* in floats, within a role buffer */
    bool decay;        /* DINO's regularized group: not a bias, not 1-D */
    bool trainable;    /* false for weight_g when norm_last_layer */
    bool last_layer;   /* gradients cancelled during freeze_last_layer */
} dino_param;

typedef struct dino_step_stats {
    double loss, lr, weight_decay, momentum, teacher_temp;
    int nclipped;      /* tensors whose gradient was scaled down */
    bool last_layer_frozen;
} dino_step_stats;

typedef struct dino_trainer dino_trainer;

dino_trainer *dino_trainer_new(gd_backend *be, const dino_model_cfg *m, const dino_train_cfg *tc,
                               int B, int nviews, const int *res, uint64_t seed, gd_err *err);
void dino_trainer_free(dino_trainer *t);

/* DINO's initialisation (truncated normal 0.02 for linears, cls token and
 * position embedding; PyTorch's default for the patch convolution and the
 * last layer); teacher = student, moments and center zero. */
int dino_trainer_init(dino_trainer *t, uint64_t seed, gd_err *err);

const dino_param *dino_trainer_params(const dino_trainer *t, int *n);
size_t dino_trainer_nfloats(const dino_trainer *t);

/* Roles of the state, for loading and exporting by name. */
typedef enum { DINO_STUDENT, DINO_TEACHER, DINO_ADAM_M, DINO_ADAM_V, DINO_GRAD } dino_role;
const char *dino_role_prefix(dino_role r); /* "student/", ... */

/* Sets every parameter of a role from tensors named prefix + path in m
 * (f4, shape checked); an error names the first missing or wrong one. */
int dino_trainer_load(dino_trainer *t, dino_role r, const msg *m, const char *prefix, gd_err *err);
/* Adds every parameter of a role to m as prefix + path. */
int dino_trainer_export(dino_trainer *t, dino_role r, msg *m, const char *prefix, gd_err *err);
int dino_trainer_get_center(dino_trainer *t, float *host, gd_err *err); /* [out_dim] */
int dino_trainer_set_center(dino_trainer *t, const float *host, gd_err *err);

/* Forward of teacher and student, the loss at teacher temperature temp,
 * and (when grads) the student's gradient in the DINO_GRAD buffer (zeroed
 * first).  Draws drop-path masks from the stream (seed, it).  Changes no
 * parameter and not the center. */
int dino_trainer_loss(dino_trainer *t, float *const *views, long it, double temp, bool grads,
                      double *loss, gd_err *err);

/* One whole DINO iteration `it` (epoch = it / niter_per_epoch): loss and
 * gradients, center update, per-tensor clipping, last-layer freeze, AdamW
 * with DINO's parameter groups, teacher EMA.  A non-finite loss is an
 * error and leaves the parameters untouched. */
int dino_trainer_step(dino_trainer *t, float *const *views, long it, dino_step_stats *st,
                      gd_err *err);

/* Data-parallel training over c's ranks (each holds a full replica and
 * its own B samples): dino_trainer_step then takes the global mean of the
 * loss, averages the gradient before clipping (one all-reduce over the
 * whole gradient buffer, or buckets: dino_trainer_set_buckets) and updates
 * the center with the global batch mean of the teacher output, as DINO
 * does; drop-path masks are drawn as one process would draw them for the
 * batch of B * world samples in rank order.  So world ranks train as one
 * process on the concatenated batch.  NULL (the default) or
 * gd_comm_single(): one process, unchanged; a distributed communicator of
 * one rank runs its collectives (identities), which checks a transport
 * against the plain run. */
void dino_trainer_set_comm(dino_trainer *t, gd_comm *c);
/* The gradient all-reduce of a distributed step in buckets of about
 * `floats` floats, each started as soon as the backward pass has finished
 * its gradients (the head's right after the head, a block's after that
 * block's backward on the last crop group), so that the reduction overlaps
 * the rest of the backward pass; 0 (the default): one all-reduce of the
 * whole buffer after backward.  The sums are the same either way. */
void dino_trainer_set_buckets(dino_trainer *t, size_t floats);

/* The student head output of the last forward [nviews B, out_dim] and the
 * teacher's [2 B, out_dim], downloaded. */
int dino_trainer_outputs(dino_trainer *t, float *student, float *teacher, gd_err *err);

/* Backbone features (the final-norm CLS token, as DINO's k-NN evaluation
 * takes them) of the student's or the teacher's weights, without drop
 * path, on the two global views (device [B, in_chans, res0, res0] each):
 * feat (host) gets [2 B, embed_dim], view 0's rows first. */
int dino_trainer_features(dino_trainer *t, dino_role r, float *const *views, float *feat,
                          gd_err *err);

/* DINO's eval_linear --avgpool_patchtokens (n_last_blocks 1): the final
 * norm applied to every token of the last block, then per image the CLS
 * token c and the mean m of the patch tokens, interleaved as DINO's
 * cat((c.unsqueeze(-1), m.unsqueeze(-1)), -1).reshape(B, -1) lays them
 * out: feat (host) gets [2 B, 2 embed_dim], element 2i = c[i], 2i+1 = m[i].
 * Same views and role rules as dino_trainer_features.  Additive. */
int dino_trainer_features_avgpool(dino_trainer *t, dino_role r, float *const *views, float *feat,
                                  gd_err *err);

/* Patch tokens (no CLS, before the final norm) after each of the given
 * blocks (1-based, each in 1..depth) of the student's or the teacher's
 * backbone, without drop path, on the two global views: out[l] (device)
 * gets [2 B, (res/patch)^2, embed_dim], view 0's images first.  Additive,
 * for mpa-adapt's decoder. */
int dino_trainer_tokens(dino_trainer *t, dino_role r, float *const *views, const int *blocks,
                        int nblocks, float *const *out, gd_err *err);

/* The backward of the last dino_trainer_tokens call (same role, blocks):
 * dtok[l] (device, [2 B, np, embed_dim]) is the gradient of level l's
 * tokens; the gradient of the role's backbone parameters is ADDED to the
 * DINO_GRAD buffer (zero it first).  Additive, for mpa-adapt's fine-tuning. */
int dino_trainer_tokens_bwd(dino_trainer *t, dino_role r, const int *blocks, int nblocks,
                            float *const *dtok, gd_err *err);

/* The L2 norm of each parameter's gradient in the last dino_trainer_step,
 * before clipping (what DINO's utils.clip_gradients returns), into
 * norms[i] for parameter i of the table (0 for an untrainable one, which
 * has no gradient; all 0 before the first step).  Additive. */
void dino_trainer_grad_norms(const dino_trainer *t, double *norms);

/* The per-parameter AdamW step counts, in table order (dino_trainer_params):
 * state that lives on the host, read and set by checkpoints so that a
 * resumed run continues bit for bit. */
int *dino_trainer_adam_steps(dino_trainer *t);

/* Device pointers, for tests that perturb the state directly. */
float *dino_trainer_buffer(dino_trainer *t, dino_role r);

#endif
