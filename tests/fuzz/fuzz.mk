# make fuzz: build the libFuzzer targets with clang (ASan + UBSan) and run
# each for FUZZ_SECONDS.  Crashes land in build-fuzz/; fix them and copy the
# input into tests/fuzz/corpus-*/ as a regression case.  Not part of check.
FUZZ_SECONDS ?= 60
CLANG   ?= clang
FDIR    := build-fuzz
FFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -Ilibcommon -fsanitize=fuzzer,address,undefined \
           -fno-sanitize-recover=undefined
LIBSRC  := libcommon/err.c libcommon/value.c libcommon/io.c libcommon/msg.c libcommon/raster.c \
           libcommon/aelpaste.c libcommon/rng.c libcommon/parallel.c
LIBS    := -ltiff -lmsgpackc -lm

.PHONY: run
run: $(FDIR)/fuzz_msg $(FDIR)/fuzz_tiff $(FDIR)/fuzz_means
	@mkdir -p $(FDIR)/new-msg $(FDIR)/new-tiff $(FDIR)/new-means
	cd $(FDIR) && ./fuzz_msg -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	    new-msg ../tests/fuzz/corpus-msg
	cd $(FDIR) && ./fuzz_tiff -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 \
	    new-tiff ../tests/fuzz/corpus-tiff
	cd $(FDIR) && ./fuzz_means -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=4096 \
	    new-means ../tests/fuzz/corpus-means

$(FDIR)/fuzz_%: tests/fuzz/fuzz_%.c $(LIBSRC)
	@mkdir -p $(FDIR)
	$(CLANG) $(FFLAGS) $^ $(LIBS) -o $@
