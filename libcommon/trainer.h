/* trainer.h: what dino-step keeps around the DINO core (dino.h): the whole
 * run configuration and its place in checkpoint meta, checkpoints (save
 * atomically, load, periodic copies), turning `batch` messages into the
 * trainer's views, and the metrics of a step (gradient norms, teacher
 * entropy, KL, collapse).
 *
 * Checkpoint (a `checkpoint` message, FORMAT.md):
 *   tensors  student/<path>, teacher/<path>, adam_m/<path>, adam_v/<path>
 *            (<f4, DINO's parameter names), center [out_dim] <f4
 *   meta     tool, version, step (iterations done), epoch (step / iters per
 *            epoch), config (map, below), adam_steps (per-parameter AdamW
 *            step counts, table order), rng (map: algorithm, seed,
 *            drop_path_stream), stats (map: bands, mean, std, scale; when known) */
#ifndef GD_TRAINER_H
#define GD_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "dino.h"
#include "err.h"
#include "msg.h"

typedef struct run_config {
    char arch[32];
    dino_model_cfg model;
    dino_train_cfg train;
    int batch_size;               /* batch_size_per_gpu: samples per `batch` message */
    int world_size;               /* train.batch_size_total = batch_size * world_size */
    int global_crops_number;      /* 2 */
    int local_crops_number;       /* 8 */
    double global_crops_scale[2], local_crops_scale[2];
    /* crop sides in pixels (DINOv2's global_crops_size, local_crops_size):
     * 0 until init's --global-size/--local-size or the first batch fixes
     * them; optional keys in meta (older checkpoints lack them) */
    int global_crops_size, local_crops_size;
    long dataset_size;            /* 0 when iters_per_epoch was given directly */
    uint64_t seed;
    /* normalisation of the training data (tif-stats), for embed */
    int nstats;                   /* bands; 0 when unknown */
    double stats_scale;           /* raw values are divided by it before normalizing */
    double *mean, *std;
    char **bands;
} run_config;

/* DINO's main_dino.py defaults (vit_small, patch 16, out_dim 65536, ...). */
void run_config_defaults(run_config *c);
void run_config_free(run_config *c);
/* Takes mean/std/bands from a `stats` message. */
int run_config_set_stats(run_config *c, const msg *stats, gd_err *err);
/* Writes the configuration into meta "config" (and "stats"). */
int run_config_to_meta(const run_config *c, value *meta, gd_err *err);
/* Reads it back (every key required); validates the model. */
int run_config_from_meta(run_config *c, const value *meta, gd_err *err);
/* Prints "key: value" lines, for dino-step init --print-config. */
void run_config_print(const run_config *c, FILE *f);

/* The views of one `batch` message: global [B,G,C,H,W], local [B,L,C,h,w]
 * (any float dtype), checked against the configuration. */
typedef struct batch_shape {
    int B, G, L, C, H, h;
} batch_shape;
int batch_shape_of(const msg *m, batch_shape *s, gd_err *err);
int batch_check(const run_config *c, const batch_shape *s, gd_err *err);
/* A crop side for the model: a multiple of the patch, at most 4 img_size;
 * what names the view ("global", "local") in the error. */
int crop_size_check(const run_config *c, const char *what, int size, gd_err *err);
/* Records the first batch's crop sizes where the configuration has none. */
void run_config_fix_sizes(run_config *c, const batch_shape *s);

/* A batch message converted to float32, view by view ([B, C, res, res]
 * each, back to back) and checked, in host memory of the backend
 * (page-locked on the GPU): what views_fill does on the host, which an
 * input thread can do while the trainer computes the previous step. */
typedef struct staged_batch {
    batch_shape s;
    bool shape_ok;   /* s is the batch's shape */
    int status;      /* 0: ready; -1: unusable, err says why */
    gd_err err;
    float *buf;
    size_t cap;      /* floats in buf, kept for the next batch */
} staged_batch;
/* Fills sb from batch (any thread; the result, good or not, is in sb). */
void staged_batch_make(staged_batch *sb, gd_backend *be, const msg *batch);
void staged_batch_free(staged_batch *sb, gd_backend *be);

/* Device buffers for the views, filled from batch messages. */
typedef struct views {
    gd_backend *be;
    batch_shape s;
    int nviews, res[32];
    float *dev[32];
    staged_batch own;             /* views_fill's */
} views;
int views_init(views *v, gd_backend *be, const batch_shape *s, gd_err *err);
/* The staged batch into the device views: one upload per view; sb may be
 * reused when it returns.  The shape must equal v->s. */
int views_fill_staged(views *v, const staged_batch *sb, gd_err *err);
int views_fill(views *v, const msg *batch, gd_err *err); /* shape must equal v->s */
void views_free(views *v);

/* A trainer for a configuration and batch shape (construction only). */
dino_trainer *run_trainer_new(gd_backend *be, const run_config *c, const batch_shape *s,
                              gd_err *err);

/* Builds the checkpoint message of the trainer's state at `step`. */
msg *checkpoint_build(dino_trainer *t, const run_config *c, long step, gd_err *err);
/* Writes it atomically to path; with keep > 0 also as a periodic copy
 * <stem>-<step, 6 digits>.mpt next to it, removing the oldest copies
 * beyond keep. */
int checkpoint_save(dino_trainer *t, const run_config *c, long step, const char *path, int keep,
                    gd_err *err);
/* Sets the trainer's state (all four roles, center, AdamW step counts)
 * from a checkpoint message. */
int checkpoint_restore(dino_trainer *t, const msg *ck, gd_err *err);
/* Only the student's and the teacher's weights, for a new schedule from
 * them (dino-step train --restart): moments, center and AdamW step counts
 * stay as a new trainer has them, zero. */
int checkpoint_restore_weights(dino_trainer *t, const msg *ck, gd_err *err);

/* Metrics of the last step, computed on the host. */
typedef struct step_metrics {
    /* L2 norms of the gradient before clipping (DINO clip_gradients' return value) */
    double grad_norm_backbone, grad_norm_head, grad_norm_last_layer, grad_norm_total;
    double teacher_entropy;       /* mean over rows of H(q), nats */
    double teacher_mean_entropy;  /* H(mean over rows of q): ~0 when every row picks one dim */
    double kl;                    /* mean over DINO's pairs of KL(q_i || p_v) = loss - H(q) */
} step_metrics;
/* center_before: the center the step's loss used ([out_dim], host). */
int step_metrics_compute(gd_backend *be, dino_trainer *t, const run_config *c, const float *center_before,
                         double temp, double loss, bool grads, step_metrics *mx, gd_err *err);

/* A whole tile for embedding: read, scaled and normalized with the run's
 * stats (invalid pixels become 0, as in multicrop), then the centred
 * square of side *size (the largest multiple of the patch that fits) into
 * out [in_chans, size, size]; with *size > 0 on entry the tile must give
 * that size.  out may be NULL to learn the size. */
int embed_tile(const run_config *c, const char *path, int *size, float *out, gd_err *err);

#endif
