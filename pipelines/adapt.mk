# Domain adaptation of a segmentation decoder on a DINO backbone, as Make
# targets: source-only, pseudo-label self-training, and Mutual Prototypical
# Adaptation (mpa-adapt(1)), each evaluated on the labelled target test set.
#
#   make -f pipelines/adapt.mk DATA=dir CKPT=dino.mpt RUN=runs/name [K=3 SEED=0 ...]
#
# DATA holds (as pipelines/adapt-data.py writes them)
#   src-train.txt          "image label" lines: labelled source tiles
#   tgt-train-images.txt   target tiles (their labels are never read)
#   tgt-test.txt           "image label" lines: the target evaluation set
# CKPT is a dino-step checkpoint holding tif-stats of the source tiles
# (dino-step init --stats, or a trained one).
#
#   RUN/source.mpt              train-source: the decoder on the source tiles
#   RUN/pl/list.txt, pl.json    pseudo-label: target label rasters, thresholds
#   RUN/protos.mpt              prototypes: the mutual bank of source and target
#   RUN/selftrain.mpt           adapt --lambda-proto 0 (source CE + target CE)
#   RUN/mpa.mpt, bank.mpt       adapt with the prototype loss, and the final bank
#   RUN/eval-{source,selftrain,mpa}.json   eval on tgt-test.txt
#   RUN/eval-source-src.json    the source model on its own training tiles
#   RUN/summary.json            the three target mIoUs side by side
#   RUN/log/*.jsonl             per-iteration losses
#
# FINETUNE=1 trains the backbone too (mpa-adapt --finetune).
# HEAD=dmlp (DMLP_BLOCKS=2) gives the decoder deformable MLP blocks.
# Every model is written atomically, so an interrupted run resumes where it
# stopped.  Targets: all (default), clean-run (removes RUN).

ifndef DATA
$(error DATA=dir is required (src-train.txt, tgt-train-images.txt, tgt-test.txt))
endif
ifndef CKPT
$(error CKPT=dino.mpt is required (a dino-step checkpoint with stats))
endif
ifndef RUN
$(error RUN=runs/name is required)
endif

ROOT    := $(patsubst %/pipelines/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
BIN     ?= $(ROOT)/bin
PYTHON  ?= /usr/bin/python3
MPA     := $(BIN)/mpa-adapt

K            ?= 3
LEVELS       ?=
EMB          ?= 128
BATCH        ?= 8
SEED         ?= 0
LR           ?= 0.001
SRC_STEPS    ?= 300
ADAPT_STEPS  ?= 200
SCALES       ?= 0.5,0.75,1,1.25,1.5
MAX_THRESH   ?= 0.9
LAMBDA       ?= 0.001
BANK_EVERY   ?= 100
BANK_MOM     ?= 0.999
FINETUNE     ?=
HEAD         ?=
DMLP_BLOCKS  ?=

COMMON := --batch-size $(BATCH) --quiet
TRAIN  := $(COMMON) --seed $(SEED) --lr $(LR) $(if $(FINETUNE),--finetune)

.PHONY: all clean-run
.DELETE_ON_ERROR:

all: $(RUN)/summary.json

$(RUN)/source.mpt: $(CKPT) $(DATA)/src-train.txt
	@mkdir -p $(RUN)/log
	$(MPA) train-source --ckpt $(CKPT) --num-classes $(K) $(if $(LEVELS),--levels $(LEVELS)) \
	    --emb-chans $(EMB) $(if $(HEAD),--head $(HEAD)) $(if $(DMLP_BLOCKS),--dmlp-blocks $(DMLP_BLOCKS)) \
	    --list $(DATA)/src-train.txt --steps $(SRC_STEPS) $(TRAIN) \
	    --log $(RUN)/log/source.jsonl -o $@

$(RUN)/pl/list.txt: $(RUN)/source.mpt $(DATA)/tgt-train-images.txt
	$(MPA) pseudo-label --model $< --list $(DATA)/tgt-train-images.txt --out-dir $(RUN)/pl \
	    --scales $(SCALES) --max-thresh $(MAX_THRESH) $(COMMON) -o $(RUN)/pl.json

$(RUN)/protos.mpt: $(RUN)/source.mpt $(RUN)/pl/list.txt
	$(MPA) prototypes --model $< --source $(DATA)/src-train.txt --target $(RUN)/pl/list.txt \
	    $(COMMON) -o $@

$(RUN)/selftrain.mpt: $(RUN)/source.mpt $(RUN)/pl/list.txt
	$(MPA) adapt --model $< --source $(DATA)/src-train.txt --target $(RUN)/pl/list.txt \
	    --lambda-proto 0 --steps $(ADAPT_STEPS) $(TRAIN) --log $(RUN)/log/selftrain.jsonl -o $@

$(RUN)/mpa.mpt: $(RUN)/source.mpt $(RUN)/pl/list.txt $(RUN)/protos.mpt
	$(MPA) adapt --model $< --source $(DATA)/src-train.txt --target $(RUN)/pl/list.txt \
	    --protos $(RUN)/protos.mpt --lambda-proto $(LAMBDA) --bank-every $(BANK_EVERY) \
	    --bank-momentum $(BANK_MOM) --steps $(ADAPT_STEPS) $(TRAIN) \
	    --log $(RUN)/log/mpa.jsonl --bank-out $(RUN)/bank.mpt -o $@

$(RUN)/eval-source-src.json: $(RUN)/source.mpt
	$(MPA) eval --model $< --list $(DATA)/src-train.txt $(COMMON) -o $@

$(RUN)/eval-%.json: $(RUN)/%.mpt $(DATA)/tgt-test.txt
	$(MPA) eval --model $< --list $(DATA)/tgt-test.txt $(COMMON) -o $@

$(RUN)/summary.json: $(RUN)/eval-source.json $(RUN)/eval-selftrain.json $(RUN)/eval-mpa.json \
                     $(RUN)/eval-source-src.json
	$(PYTHON) -c 'import json, sys; \
	    r = {k: json.load(open(f)) for k, f in zip(["source_only", "selftrain", "mpa", "source_on_source"], sys.argv[1:])}; \
	    print(json.dumps({k: {"miou": v["miou"], "pixel_acc": v["pixel_acc"], "iou": v["iou"]} for k, v in r.items()}))' \
	    $^ > $@.tmp && mv $@.tmp $@
	@cat $@

clean-run:
	rm -rf $(RUN)
