# A whole DINO run, resumable, as Make targets:
#
#   make -f pipelines/dino.mk DATA=dir RUN=runs/name [ARCH=... EPOCHS=... ...]
#
# DATA holds train.txt and test.txt, "path label" lines (as
# pipelines/l7-landcover.py and pipelines/synthetic-textures.py write them).
# Pretraining reads the tiles of train.txt (labels unused); the k-NN
# evaluation embeds train.txt and test.txt with the teacher and runs knn-eval.
#
#   RUN/config.mk            the configuration (a later call with another one is refused)
#   RUN/commands.sh          every command that ran, with its time, in order
#   RUN/stats.mpt            tif-stats of the training tiles
#   RUN/ckpt/epoch-000.mpt   dino-step init; epoch-NNN.mpt after epoch NNN
#   RUN/log/epoch-NNN.jsonl  dino-step's metrics during epoch NNN
#   RUN/knn/epoch-NNN.json   knn-eval --json of the teacher at epoch NNN
#                            (000 = initialisation, every KNN_EVERY, the last)
#   RUN/knn/band-stats.json  the per-band mean/std baseline
#   RUN/summary.json         per-epoch loss, teacher entropy, k-NN top-1; baselines
#   RUN/curves.tsv, RUN/curves.png (gnuplot, when installed)
#
# Each epoch's checkpoint is a target made from the previous one (multicrop
# --epochs 1 with the seed SEED*1000+epoch | dino-step train --steps
# ITERS), written to a temporary file and renamed: an interrupted run
# (Ctrl-C, Slurm's SIGTERM, a crash) loses at most the epoch in progress, and
# the same command resumes from the last finished epoch.  Targets: all
# (default), train, knn, report, config, clean-run (removes RUN).

ifndef DATA
$(error DATA=dir is required (a directory with train.txt and test.txt))
endif
ifndef RUN
$(error RUN=runs/name is required)
endif

# Programs (the build's by default).
ROOT      := $(patsubst %/pipelines/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
BIN       ?= $(ROOT)/bin
PYTHON    ?= /usr/bin/python3
ifndef GNUPLOT
GNUPLOT   := $(shell command -v gnuplot 2>/dev/null)
endif

# The model: a ViT sized for small tiles.  ARCH sets the sizes; EMBED_DIM,
# DEPTH and HEADS override them when not empty.
ARCH          ?= vit_tiny
EMBED_DIM     ?= 96
DEPTH         ?= 3
HEADS         ?= 3
PATCH         ?= 4
OUT_DIM       ?= 256
HIDDEN_DIM    ?= 256
BOTTLENECK    ?= 64
DROP_PATH     ?= 0
# Training.
EPOCHS        ?= 10
BATCH         ?= 32
LR            ?= 0.002
MIN_LR        ?= 1e-5
WARMUP        ?= 1
MOMENTUM      ?= 0.99
TEACHER_TEMP  ?= 0.04
WARMUP_TEACHER_TEMP ?= 0.04
WEIGHT_DECAY  ?= 0.04
WEIGHT_DECAY_END ?= 0.4
FREEZE_LAST   ?= 1
SEED          ?= 0
# Views: sizes and strengths for tiles of 24-32 pixels.  The brightness/
# contrast jitter draws one factor pair per view for all bands (an
# illumination change): per band, it would also scramble the band ratios
# that land cover lives in (bench/results-learn.md).
GLOBAL_SIZE   ?= 24
LOCAL_SIZE    ?= 12
LOCAL_CROPS   ?= 4
GLOBAL_SCALE  ?= 0.5 1
LOCAL_SCALE   ?= 0.2 0.5
AUG           ?= --collapse-prob 0 0 0 --blur-prob 0.5 0.1 0.2 --blur-sigma 0.1 1 --solarize-prob 0 0 0 --ssr-prob 1 --ssr-rotate 180 --ssr-shift 0.1 --ssr-scale 0 --jitter-bands all
INIT_EXTRA    ?=
# Evaluation.
KNN_EVERY     ?= 2
KNN_K         ?= 10 20 100 200
BASELINE      ?= 1
THREADS       ?=

CONFIG_VARS := DATA ARCH EMBED_DIM DEPTH HEADS PATCH OUT_DIM HIDDEN_DIM BOTTLENECK DROP_PATH \
               EPOCHS BATCH LR MIN_LR WARMUP MOMENTUM TEACHER_TEMP WARMUP_TEACHER_TEMP \
               WEIGHT_DECAY WEIGHT_DECAY_END FREEZE_LAST SEED GLOBAL_SIZE LOCAL_SIZE LOCAL_CROPS \
               GLOBAL_SCALE LOCAL_SCALE AUG INIT_EXTRA KNN_EVERY KNN_K BASELINE

.DELETE_ON_ERROR:

pad       = $(shell printf '%03d' $(1))
EPOCH_IDS := $(shell seq -f '%03g' 0 $(EPOCHS))
LAST      := $(call pad,$(EPOCHS))
KNN_IDS   := $(sort 000 $(LAST) $(shell seq -f '%03g' $(KNN_EVERY) $(KNN_EVERY) $(EPOCHS)))
N_TRAIN   := $(shell grep -c . $(DATA)/train.txt 2>/dev/null)
ITERS     := $(shell echo $$(( $(or $(N_TRAIN),0) / $(BATCH) )))
opt       = $(if $(strip $(2)),$(1) $(2))

.PHONY: all train knn report config clean-run
all: report
train: $(RUN)/ckpt/epoch-$(LAST).mpt
knn: $(KNN_IDS:%=$(RUN)/knn/epoch-%.json) $(if $(filter 1,$(BASELINE)),$(RUN)/knn/band-stats.json)
report: $(RUN)/summary.json $(if $(GNUPLOT),$(RUN)/curves.png)
config: $(RUN)/config.mk

# The configuration, written once; a different one for the same RUN is an error.
$(RUN)/config.mk: FORCE
	@mkdir -p $(RUN)
	@{ $(foreach v,$(CONFIG_VARS),echo '$(v) = $($(v))';) } > $@.new
	@if [ -f $@ ] && ! cmp -s $@ $@.new; then \
	    echo "dino.mk: $(RUN) was made with another configuration:" >&2; diff $@ $@.new >&2; rm -f $@.new; exit 1; fi
	@if [ -f $@ ]; then rm -f $@.new; else mv $@.new $@; fi
	@[ "$(ITERS)" -gt 0 ] || { echo "dino.mk: $(DATA)/train.txt: fewer tiles than BATCH=$(BATCH)" >&2; exit 1; }
FORCE:

$(RUN)/train-paths.txt: $(DATA)/train.txt | $(RUN)/config.mk
	cut -d' ' -f1 $< > $@.tmp && mv $@.tmp $@

$(RUN)/stats.mpt: $(RUN)/train-paths.txt
	$(BIN)/tif-stats -q -p 2,98 --list $< -o $@ > $(RUN)/stats.json

$(RUN)/ckpt/epoch-000.mpt: $(RUN)/stats.mpt
	@mkdir -p $(dir $@)
	$(BIN)/dino-step init --force --stats $< --arch $(ARCH) $(call opt,--embed-dim,$(EMBED_DIM)) \
	  $(call opt,--depth,$(DEPTH)) $(call opt,--num-heads,$(HEADS)) --patch-size $(PATCH) \
	  --img-size $(GLOBAL_SIZE) --out-dim $(OUT_DIM) --hidden-dim $(HIDDEN_DIM) --bottleneck-dim $(BOTTLENECK) \
	  --drop-path-rate $(DROP_PATH) --epochs $(EPOCHS) --warmup-epochs $(WARMUP) --iters-per-epoch $(ITERS) \
	  --batch-size-per-gpu $(BATCH) --lr $(LR) --min-lr $(MIN_LR) --momentum-teacher $(MOMENTUM) \
	  --teacher-temp $(TEACHER_TEMP) --warmup-teacher-temp $(WARMUP_TEACHER_TEMP) \
	  --warmup-teacher-temp-epochs $(WARMUP) --weight-decay $(WEIGHT_DECAY) \
	  --weight-decay-end $(WEIGHT_DECAY_END) --freeze-last-layer $(FREEZE_LAST) \
	  --local-crops-number $(LOCAL_CROPS) --global-crops-scale $(GLOBAL_SCALE) \
	  --local-crops-scale $(LOCAL_SCALE) --seed $(SEED) $(INIT_EXTRA) -o $@.tmp
	mv $@.tmp $@

# One rule per epoch: epoch-NNN.mpt from epoch-(NNN-1).mpt.
define EPOCH_RULE
$(RUN)/ckpt/epoch-$(2).mpt: $(RUN)/ckpt/epoch-$(1).mpt
	@mkdir -p $(RUN)/log
	rm -f $(RUN)/log/epoch-$(2).jsonl.tmp
	cp $$< $$@.tmp
	$(BIN)/multicrop --quiet --stats $(RUN)/stats.mpt --list $(RUN)/train-paths.txt --epochs 1 \
	  --batch-size $(BATCH) --drop-last --seed $$$$(( $(SEED) * 1000 + 10#$(2) )) $(call opt,--threads,$(THREADS)) \
	  --global-size $(GLOBAL_SIZE) --local-size $(LOCAL_SIZE) --local-crops-number $(LOCAL_CROPS) \
	  --global-crops-scale $(GLOBAL_SCALE) --local-crops-scale $(LOCAL_SCALE) $(AUG) \
	| $(BIN)/dino-step train --quiet --ckpt $$@.tmp --steps $(ITERS) --save-every 0 \
	  --log $(RUN)/log/epoch-$(2).jsonl.tmp --log-every 1 --collapse-check
	tail -n 1 $(RUN)/log/epoch-$(2).jsonl.tmp | grep -q "^{\"step\": $$$$(( 10#$(2) * $(ITERS) ))," \
	  || { echo "dino.mk: epoch $(2) stopped before its $(ITERS) steps (signal?): run make again to redo it" >&2; exit 1; }
	mv $(RUN)/log/epoch-$(2).jsonl.tmp $(RUN)/log/epoch-$(2).jsonl
	mv $$@.tmp $$@
endef
$(foreach i,$(shell seq 1 $(EPOCHS)),$(eval $(call EPOCH_RULE,$(call pad,$(shell echo $$(($(i)-1)))),$(call pad,$(i)))))

$(RUN)/knn/epoch-%.json: $(RUN)/ckpt/epoch-%.mpt
	@mkdir -p $(dir $@)
	$(BIN)/dino-step embed --ckpt $< --list $(DATA)/train.txt -o $(RUN)/knn/train-$*.mpt
	$(BIN)/dino-step embed --ckpt $< --list $(DATA)/test.txt -o $(RUN)/knn/test-$*.mpt
	$(BIN)/knn-eval --train $(RUN)/knn/train-$*.mpt --test $(RUN)/knn/test-$*.mpt -k $(KNN_K) --json $@.tmp
	mv $@.tmp $@
	rm -f $(RUN)/knn/train-$*.mpt $(RUN)/knn/test-$*.mpt

$(RUN)/knn/band-stats.json: $(DATA)/train.txt $(DATA)/test.txt | $(RUN)/config.mk
	@mkdir -p $(dir $@)
	$(PYTHON) $(ROOT)/pipelines/band-stats-features.py $(DATA)/train.txt $(RUN)/knn/bs-train.mpt
	$(PYTHON) $(ROOT)/pipelines/band-stats-features.py $(DATA)/test.txt $(RUN)/knn/bs-test.mpt
	$(BIN)/knn-eval --train $(RUN)/knn/bs-train.mpt --test $(RUN)/knn/bs-test.mpt -k $(KNN_K) --json $@.tmp
	mv $@.tmp $@
	rm -f $(RUN)/knn/bs-train.mpt $(RUN)/knn/bs-test.mpt

$(RUN)/summary.json: $(RUN)/config.mk $(RUN)/ckpt/epoch-$(LAST).mpt $(KNN_IDS:%=$(RUN)/knn/epoch-%.json) \
                     $(if $(filter 1,$(BASELINE)),$(RUN)/knn/band-stats.json)
	$(PYTHON) $(ROOT)/pipelines/dino-report.py $(RUN) > $@.tmp
	mv $@.tmp $@

$(RUN)/curves.png: $(RUN)/summary.json
	$(GNUPLOT) -e "run='$(RUN)'" $(ROOT)/pipelines/curves.gp

clean-run:
	rm -rf $(RUN)

# Last, so that the $(shell ...) calls above are not logged: every recipe
# command runs through run-logged.sh, which appends it to RUN/commands.sh.
SHELL       := $(ROOT)/pipelines/run-logged.sh
.SHELLFLAGS := $(RUN)/commands.sh -c
