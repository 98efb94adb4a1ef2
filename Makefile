# meranet_fast — every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
#   make demo    the main job on the embedded synthetic data
#   make test    build everything, then the full CPU test suite (Triton kernels under TRITON_INTERPRET=1)
#   make build   (re)compile the extension in place (incremental)
#   make bench   CPU benchmarks of the fused operators against eager PyTorch and torch.compile
#   make test-cuda-emu   the CUDA kernels on the CPU: emulated build of csrc/cuda, CUDA tests in two thread orders
#   make cuda-resources  per-kernel registers / spills / shared memory / occupancy table (needs nvcc)
# Knobs: PYTHON, VENV, TORCH_SPEC, MAX_JOBS, TORCH_CUDA_ARCH_LIST, MERANET_SKIP_CUDA, MERANET_FORCE_CUDA.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch>=2.6
MAX_JOBS ?= 2
export MAX_JOBS
# A CUDA compile error must fail the build wherever nvcc exists (CI compiles the CUDA sources).
ifneq ($(shell command -v nvcc 2>/dev/null),)
MERANET_FORCE_CUDA ?= 1
export MERANET_FORCE_CUDA
endif

.PHONY: venv build test test-fast demo bench flops clean test-cuda-emu cuda-resources
.DEFAULT_GOAL := test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# Dependencies first (setup.py imports torch), then the package itself without build isolation, so
# the extension is compiled against the torch that runs it. pip installs the Python side only; `build`
# compiles the extension once, in place and incrementally (pip's editable build would compile it in a
# temporary folder and `build` again from scratch).
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" numpy ninja setuptools wheel
	MERANET_NO_EXTENSION=1 $(BIN)/python -m pip install -q --no-build-isolation -e ".[dev,triton]"
	touch $@

venv: $(VENV)/.installed

# flock: concurrent builds in one tree would write the same objects.
build: venv
	flock build.lock $(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -c "import meranet_fast._extension as e; print('meranet_fast._C:', e.build_info())"

test: build
	TRITON_INTERPRET=1 $(BIN)/python -m pytest tests
	$(MAKE) test-cuda-emu

# CUDA emulator (tools/cuda_emu): csrc/cuda rewritten for the CPU, AddressSanitizer on, the CUDA tests
# in the forward and reverse thread orders, then the planted-bug check (each must make the tests fail).
test-cuda-emu: build
	$(BIN)/python tools/cuda_emu/run_tests.py --orders forward,reverse
	$(BIN)/python tools/cuda_emu/plant_bugs.py

# ptxas resource table of every CUDA kernel (recompiles the CUDA sources with ptxas -v).
cuda-resources: venv
	$(BIN)/python tools/cuda_resources.py --out benchmarks/results/cuda_resources.md

test-fast: build
	$(BIN)/python -m pytest -m "not slow and not triton" tests

# Trains fused MERANet-18 on the embedded synthetic micro-expression set (a few minutes on 2 CPU cores).
demo: build
	$(BIN)/meranet-fast train --preset demo

bench: build
	$(BIN)/meranet-fast bench --op st_attention

flops: venv
	$(BIN)/meranet-fast flops

clean:
	rm -rf build build.lock meranet_fast/*.so *.egg-info
