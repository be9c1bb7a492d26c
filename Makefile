# The two set-up commands of the README: `make demo` (install + main job) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= nano
TASK ?= OD
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test bench clean

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

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/florence2_batching.py --quick

clean:
	rm -rf out .pytest_cache .hypothesis
