# Multi-profile LLM serving on Triton: the runbook. `make help` lists targets.

PYTHON       ?= python3
VENV         ?= .venv
# Override PY to use an existing interpreter (e.g. PY=python3 on the GPU machine); then no venv is made.
PY           ?= $(VENV)/bin/python
MODEL        ?= tiny
DEVICE       ?= cpu
RUNTIME      ?= auto
DTYPE        ?= auto
HTTP_PORT    ?= 8000
GRPC_PORT    ?= 8001
METRICS_PORT ?= 8002
# A CPU build: a loose `torch` pulls several GB of CUDA wheels.
TORCH_SPEC   ?= torch==2.13.0
PYTRITON     ?= nvidia-pytriton==0.7.0
BENCH_MODEL  ?= gemma-3-1b
# Which models `make build` builds (make bench measures llm and llm_single only).
BUILD_MODELS ?= llm llm_single generate
# FRESH=1: build from scratch: first wipe the inductor cache and the built versions of BUILD_MODELS.
FRESH        ?=
# On CUDA: compiles of llm's static decode profile and of generate's batch-1 decode step, each from an empty cache;
# the fastest is kept (empty = 3).
TUNE_RUNS    ?=
BENCH_ARGS   ?=
CHAOS_ARGS   ?=
# Generate model overrides (empty = the model's declaration in llmprofiles/profiles/sets.py).
GEN_SLOTS    ?=
GEN_CONTEXT  ?=
GEN_DECODE_BUCKETS  ?=
GEN_PREFILL_BUCKETS ?=
GEN_PREFILL_BATCHES ?=

export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
export PYTHONUNBUFFERED := 1
# With PY=python3 the package is not installed: make it importable from the checkout.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
SETUP := $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed)
BUILD_ARGS = --model $(MODEL) --device $(DEVICE) --runtime $(RUNTIME) --dtype $(DTYPE) $(if $(TUNE_RUNS),--tune-runs $(TUNE_RUNS))
# The generate build's options; `make bench-generate` builds with them too, so it measures what `make build` made.
GEN_OPTS = $(if $(GEN_SLOTS),--slots $(GEN_SLOTS)) \
	$(if $(GEN_CONTEXT),--max-context $(GEN_CONTEXT)) $(if $(GEN_DECODE_BUCKETS),--decode-buckets $(GEN_DECODE_BUCKETS)) \
	$(if $(GEN_PREFILL_BUCKETS),--prefill-buckets $(GEN_PREFILL_BUCKETS)) $(if $(GEN_PDL),--decode-pdl) \
	$(if $(GEN_PREFILL_BATCHES),--prefill-batches $(GEN_PREFILL_BATCHES)) $(if $(TUNE_RUNS),--decode-tune-runs $(TUNE_RUNS)) \
	$(if $(GEN_FRESH_PREFILL),$(if $(filter 0,$(GEN_FRESH_PREFILL)),--no-fresh-prefill,--fresh-prefill))
# The GEN_* settings given, as the command line that repeats them (the bench report quotes it).
GEN_VARS = $(foreach v,GEN_SLOTS GEN_CONTEXT GEN_DECODE_BUCKETS GEN_PREFILL_BUCKETS GEN_PREFILL_BATCHES GEN_PDL GEN_FRESH_PREFILL TUNE_RUNS,$(if $($(v)),$(v)=$($(v)) ))
GEN_ARGS = --model $(MODEL) --device $(DEVICE) --dtype $(DTYPE) $(GEN_OPTS)

.PHONY: help setup build serve demo test bench bench-decode bench-generate check-tensorrt clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup: $(SETUP)  ## create .venv with torch (CPU), the package, tritonclient and tritonserver

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	# tritonserver ships inside the pytriton wheel; its Python deps are not needed to run the binary.
	$(PY) -m pip install -q --no-deps "$(PYTRITON)"
	# The 24.10 Python backend stub sends BYTES outputs (generate's text) empty under numpy 2.
	$(PY) -m pip install -q "numpy<2"
	touch $@

build: $(SETUP)  ## build the multi-profile engine (llm), the single-profile baseline (llm_single) and the generate model; FRESH=1 from scratch, BUILD_MODELS to pick
ifeq ($(FRESH),1)
	rm -rf "$(TORCHINDUCTOR_CACHE_DIR)"
	for m in $(BUILD_MODELS); do [ ! -d model_repository/$$m/1 ] || find model_repository/$$m/1 -mindepth 1 ! -name model.py -delete; done
endif
	$(if $(filter llm,$(BUILD_MODELS)),$(PY) build/build_engine.py $(BUILD_ARGS) --profile-set multi --out model_repository/llm)
	$(if $(filter llm_single,$(BUILD_MODELS)),$(PY) build/build_engine.py $(BUILD_ARGS) --profile-set single --out model_repository/llm_single)
	$(if $(filter generate,$(BUILD_MODELS)),$(PY) build/build_generate.py $(GEN_ARGS) --out model_repository/generate)

serve: build  ## run tritonserver in the foreground on 127.0.0.1, supervised: refuses taken ports, restarts it if it or a model dies (status in .triton/supervisor.json)
	$(PY) -m llmprofiles.serving.supervisor --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

demo: build  ## start the server, drive decode + prefill traffic, print the comparison table, stop
	$(PY) client/demo.py --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: build  ## unit, model.py and integration tests (the fixture starts tritonserver)
	$(PY) -m pytest -q

bench: $(SETUP)  ## GPU benchmark of BENCH_MODEL: engine alone and through Triton, writes bench/results/
	$(MAKE) build DEVICE=cuda MODEL=$(BENCH_MODEL) PY=$(PY)
	BENCH_VIA_MAKE='make bench PY=$(PY) BENCH_MODEL=$(BENCH_MODEL) BENCH_ARGS="$(BENCH_ARGS)"' $(PY) -m bench.llm_bench $(BENCH_ARGS)

bench-decode: $(SETUP)  ## GPU: static decode compile variants side by side (single-query attention, coordinate descent, the MLP kernels), kernel profiles; BENCH_ARGS="--variants a,b"
	$(PY) -m bench.decode_variants --model $(BENCH_MODEL) $(BENCH_ARGS)

bench-generate: $(SETUP)  ## GPU: the generate model of BENCH_MODEL: engine, Triton streaming (client + perf_analyzer), load, HF anchor; BENCH_ARGS="--phase engine" etc.
	$(PY) build/build_generate.py --model $(BENCH_MODEL) --device cuda $(GEN_OPTS) --out model_repository/generate
	BENCH_VIA_MAKE='make bench-generate $(strip PY=$(PY) BENCH_MODEL=$(BENCH_MODEL) $(GEN_VARS)) BENCH_ARGS="$(BENCH_ARGS)"' $(PY) -m bench.generate_bench --model $(BENCH_MODEL) --device cuda $(BENCH_ARGS)

.PHONY: chaos
chaos: build  ## fault injection under load: kill the server and a backend stub in turn; recovery times, requests lost; one JSON line
	$(PY) client/chaos.py $(CHAOS_ARGS)

check-tensorrt: $(SETUP)  ## self-check for users with TensorRT on a GPU: build, read profiles back, compare logits
	$(PY) -m llmprofiles.runtimes.check_tensorrt

clean:  ## remove build outputs (engines, caches); keeps .venv
	rm -rf .cache .triton model_repository/*/config.pbtxt
	find model_repository -path '*/1/*' ! -name model.py -delete
