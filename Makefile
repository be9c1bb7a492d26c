# The two set-up commands of the README: `make demo` (install + main job) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= nano
TASK ?= OD
export HF_HUB_OFFLINE ?= 1

.PHONY: install browser demo test bench bench-full bench-serve bench-chat nano nano-long nano-loc nano-names ship-nano eval-nano vl-nano clean

$(BIN)/florence-vl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # the CPU wheel on this machine; never a CUDA build
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/florence-vl

# Main job: run a Florence-2 task on a sample image and draw the result (out/sample.png, out/sample-od.png).
# MODEL=nano (default) is the shipped nano model; MODEL=DIR or a hub id runs any Florence-2 checkpoint;
# MODEL=random-tiny builds a random tiny checkpoint to show the pipeline (its output is meaningless).
demo: install
	mkdir -p out
	$(BIN)/python scripts/sample_image.py out/sample.png
	@if [ "$(MODEL)" = "random-tiny" ]; then $(BIN)/python scripts/make_tiny_checkpoint.py out/random-tiny; fi
	$(BIN)/florence-vl tasks out/sample.png --task $(TASK) \
		--model $(if $(filter random-tiny,$(MODEL)),out/random-tiny,$(MODEL)) --draw out/sample-od.png
	@if [ "$(MODEL)" = "nano" ]; then echo "florence-vl chat (Florence-VL-nano):"; \
		$(BIN)/florence-vl chat out/sample.png "How many shapes are there? Answer the question using a single word or phrase."; fi

# The web page tests drive Debian's Chromium, headless; install it when missing (root + apt-get). Where it
# cannot be installed those tests skip and say so.
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		&& echo "installed chromium" || echo "note: chromium could not be installed; the web page tests will skip"; }

test: install browser
	$(BIN)/python -m pytest

# The nano lineage from scratch: UniCL-nano, then Florence-2-nano with its DaViT initialised from UniCL-nano,
# then the evaluation on test and test-novel (~12 + ~40 + ~10 minutes on the 2-core CPU; docs/nano.md).
# `make nano-long` then goes on to 2,800 steps (a warm restart of the cosine; ~40 more minutes): stage 1, which
# `make nano-loc` continues. `make ship-nano` copies runs/*/model into models/nano/ (bf16 storage).
nano: install
	$(BIN)/florence-vl train unicl configs/unicl-nano.yaml
	$(BIN)/florence-vl train florence2 configs/florence2-nano.yaml
	$(MAKE) eval-nano NANO_MODEL=runs/florence2-nano/model EVAL_BEAMS=1

nano-long: nano
	$(BIN)/florence-vl train florence2 configs/florence2-nano.yaml --steps 2800
	$(MAKE) eval-nano NANO_MODEL=runs/florence2-nano/model

# Stage 2 of Florence-2-nano, localisation (configs/florence2-nano-loc.yaml, from runs/florence2-nano/model):
# the shipped model. `make nano-loc` runs stage 1 first if it is not there.
nano-loc: install
	test -f runs/florence2-nano/model/config.json || $(MAKE) nano-long
	$(BIN)/florence-vl train florence2 configs/florence2-nano-loc.yaml
	$(MAKE) eval-nano NANO_MODEL=runs/florence2-nano-loc/model

# Then a tower stage (DaViT on labelled object crops, configs/florence2-nano-crops.yaml, ~11 min) and stage 3,
# names, in twenty-three parts (configs/florence2-nano-names.yaml, then -names-2.yaml .. -names-18.yaml and -names-20.yaml
# to -names-24.yaml, each starting from the one before; -names-19.yaml (stage 3s) and -names-25.yaml (stage 3y) were
# not shipped; their times, ~15 to ~135 min each and ~25 h in all on a 2-core AVX2 EPYC, are in docs/nano.md):
# the encoder and decoder learn to read the new tower, which keeps its shape loss. The result is the shipped
# Florence-2-nano (docs/nano.md).
NAMES_PARTS := names $(addprefix names-,2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 20 21 22 23 24)
nano-names: install
	test -f runs/florence2-nano-loc/model/config.json || $(MAKE) nano-loc
	$(BIN)/florence-vl train crops configs/florence2-nano-crops.yaml
	for part in $(NAMES_PARTS); do $(BIN)/florence-vl train florence2 configs/florence2-nano-$$part.yaml || exit 1; done
	$(MAKE) eval-nano NANO_MODEL=runs/florence2-nano-$(lastword $(NAMES_PARTS))/model

PARTS ?= unicl,florence2
ship-nano: install
	$(BIN)/python scripts/ship_nano.py --parts $(PARTS) --florence-vl $(VL_MODEL)

# Florence-VL-nano, the shipped recipe (run R, docs/florence-vl.md): training scenes, then the nano LLM's tokenizer,
# associative-recall warm-up and LM stage, stage 1, the align stage, stage 2 and 1,500 read steps
# (configs/florence-vl-nano-read.yaml and the files it builds on), then 600 more read steps resumed from its step-1500
# checkpoint without gradient clipping (configs/florence-vl-nano-read-2100.yaml): ~150 min on one core of the 2-core
# CPU; then the VQA / POPE evaluation. `make ship-nano PARTS=florence_vl` copies it into models/nano/florence-vl.
vl-nano: install
	$(BIN)/florence-vl world generate --split train --n 8000 --out data/vl-train
	$(BIN)/florence-vl train vl configs/florence-vl-nano-read.yaml
	mkdir -p $(VL_RUN)/read
	for part in tokenizer lm stage1 align stage2; do test -d $(VL_RUN)/$$part || cp -r runs/florence-vl-nano-read/$$part $(VL_RUN)/; done
	test -d $(VL_RUN)/read/checkpoints || cp -r runs/florence-vl-nano-read/read/checkpoints $(VL_RUN)/read/
	$(BIN)/florence-vl train vl configs/florence-vl-nano-read-2100.yaml
	$(BIN)/florence-vl world generate --split test --n 500 --out data/test
	$(BIN)/florence-vl eval vl --data data/test --model $(VL_MODEL) --out docs/results/florence-vl-nano-test.json

VL_RUN ?= runs/florence-vl-nano-read-2100
VL_MODEL ?= $(VL_RUN)/read/model
NANO_MODEL ?= nano
EVAL_LIMIT ?= 500
# 3 beams: what `tasks` decodes with (~6.5 min a split here); `make nano` evaluates greedily (~3 min) to keep its budget.
EVAL_BEAMS ?= 3
eval-nano: install
	$(BIN)/florence-vl world generate --split test --n 500 --out data/test
	$(BIN)/florence-vl world generate --split test-novel --n 500 --out data/test-novel
	$(BIN)/florence-vl eval florence2 --data data/test --model $(NANO_MODEL) --limit $(EVAL_LIMIT) --beams $(EVAL_BEAMS) --out docs/results/florence2-nano-test.json
	$(BIN)/florence-vl eval florence2 --data data/test-novel --model $(NANO_MODEL) --limit $(EVAL_LIMIT) --beams $(EVAL_BEAMS) --out docs/results/florence2-nano-test-novel.json

# The benchmark suite (docs/performance.md): `make bench` is --quick (a few minutes), `make bench-full` everything.
bench: install
	$(BIN)/python bench/run.py --quick

bench-full: install
	$(BIN)/python bench/run.py

# florence-vl serve under 8 concurrent clients: dynamic batching vs one request at a time (docs/serving.md).
bench-serve: install
	$(BIN)/python bench/serve_batching.py

# Chat under 8 concurrent clients for 60 s per mode, batched vs one at a time (CHAT_SECONDS=5: a smoke run).
CHAT_SECONDS ?= 60
bench-chat: install
	$(BIN)/python bench/serve_chat.py --seconds $(CHAT_SECONDS)

clean:
	rm -rf out .pytest_cache .hypothesis
