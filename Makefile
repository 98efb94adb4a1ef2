# meranet_fast — every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
#   make demo    the main job on the embedded synthetic data
#   make test    build everything, then the full CPU test suite (Triton kernels under TRITON_INTERPRET=1)
#   make build   (re)compile the extension in place (incremental)
#   make lint    ruff over the tree (part of `make test`)
#   make test-sanitize  the C++ CPU kernels under AddressSanitizer + UBSan (part of `make test`)
#   make bench   CPU benchmarks of the fused operators against eager PyTorch and torch.compile
#   make test-cuda-emu   the CUDA kernels on the CPU: emulated build of csrc/cuda, CUDA tests in two thread orders
#   make cuda-resources  per-kernel registers / spills / shared memory / occupancy table (needs nvcc)
#   make test-compat    the oldest supported versions (torch 2.11.0, Triton 3.6.0: the GPU machine's) in .venv-compat
#   make gpu-rehearsal  benchmarks/gpu_check.sh rehearsed on the CPU with those versions (GPU_CHECK_REHEARSAL=1)
# Knobs: PYTHON, VENV, TORCH_SPEC, MAX_JOBS, TORCH_CUDA_ARCH_LIST, MERANET_SKIP_CUDA, MERANET_FORCE_CUDA.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch>=2.11
MAX_JOBS ?= 2
export MAX_JOBS
# A CUDA compile error must fail the build wherever nvcc exists (CI compiles the CUDA sources).
ifneq ($(shell command -v nvcc 2>/dev/null),)
MERANET_FORCE_CUDA ?= 1
export MERANET_FORCE_CUDA
endif

.PHONY: venv build lint test test-fast test-sanitize demo bench flops clean test-cuda-emu cuda-resources test-compat compat-build gpu-rehearsal
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
	MERANET_NO_EXTENSION=1 $(BIN)/python -m pip install -q --no-build-isolation -e ".[dev,triton,full]"
	touch $@

venv: $(VENV)/.installed

# flock: concurrent builds in one tree would write the same objects.
build: venv
	flock build.lock $(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -c "import meranet_fast._extension as e; print('meranet_fast._C:', e.build_info())"

# MERANET_REQUIRE_OPTIONAL=1: tests/conftest.py fails the run if fvcore, openpyxl or matplotlib is missing,
# so no optional-dependency test skips here (they skip only in the compat venv, which lacks two of them).
test: lint build
	MERANET_REQUIRE_OPTIONAL=1 TRITON_INTERPRET=1 $(BIN)/python -m pytest tests
	$(MAKE) --no-print-directory test-sanitize test-cuda-emu test-compat gpu-rehearsal

# CUDA emulator (tools/cuda_emu): csrc/cuda rewritten for the CPU, AddressSanitizer on, the CUDA tests
# in the forward and reverse thread orders, then the planted-bug check (each must make the tests fail).
test-cuda-emu: build
	$(BIN)/python tools/cuda_emu/run_tests.py --orders forward,reverse
	$(BIN)/python tools/cuda_emu/plant_bugs.py

# ptxas resource table of every CUDA kernel (recompiles the CUDA sources with ptxas -v).
cuda-resources: venv
	$(BIN)/python tools/cuda_resources.py --out benchmarks/results/cuda_resources.md

# The C++ CPU kernels built with AddressSanitizer + UBSan into build/sanitize (the in-place _C is left
# alone) and the CPU op and kernel tests run against them; any report fails (README "Sanitizers").
test-sanitize: venv
	PYTHON=$(BIN)/python bash tests/run_sanitized.sh

# ruff (configured in pyproject.toml) over the whole tree: first in `make test`, it takes a second.
lint: venv
	$(BIN)/ruff check .

test-fast: build
	$(BIN)/python -m pytest -m "not slow and not triton" tests

# Trains fused MERANet-18 on the embedded synthetic micro-expression set (a few minutes on 2 CPU cores).
demo: build
	$(BIN)/meranet-fast train --preset demo

bench: build
	$(BIN)/meranet-fast bench --op st_attention

flops: venv
	$(BIN)/meranet-fast flops

# --- The oldest supported versions: torch 2.11.0 + Triton 3.6.0 (+ numpy < 2.4, which Triton 3.6's
# interpreter needs), the GPU machine's, without the fvcore and openpyxl it lacks. The extension is built
# (CUDA sources too wherever nvcc exists) in a copy of the tracked files, .compat-tree, so that its
# meranet_fast/_C.abi3.so does not replace the one built against the main venv's torch.
COMPAT_VENV ?= .venv-compat
COMPAT_BIN := $(abspath $(COMPAT_VENV))/bin
COMPAT_TREE ?= .compat-tree
COMPAT_SPEC ?= torch==2.11.0 triton==3.6.0 numpy<2.4

$(COMPAT_VENV)/.installed: pyproject.toml setup.py
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(COMPAT_BIN)/python -m pip install -q $(foreach p,$(COMPAT_SPEC),"$(p)") ninja setuptools wheel
	MERANET_NO_EXTENSION=1 $(COMPAT_BIN)/python -m pip install -q --no-build-isolation -e ".[dev,triton,plots]" \
	    $(foreach p,$(COMPAT_SPEC),"$(p)")
	$(COMPAT_BIN)/python -m pip uninstall -q -y $$($(COMPAT_BIN)/python tools/compat_check.py absent)
	$(COMPAT_BIN)/python tools/compat_check.py versions
	touch $@

# The tracked (and untracked, not ignored) files, copied over the previous copy with their mtimes, so
# that the extension's rebuild there stays incremental.
compat-build: $(COMPAT_VENV)/.installed
	mkdir -p $(COMPAT_TREE)
	find $(COMPAT_TREE) -mindepth 1 -maxdepth 1 ! -name build ! -name meranet_fast -exec rm -rf {} +
	find $(COMPAT_TREE)/meranet_fast -name '*.py' -delete 2>/dev/null || true
	git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(COMPAT_TREE)
	cd $(COMPAT_TREE) && $(COMPAT_BIN)/python setup.py -q build_ext --inplace
	cd $(COMPAT_TREE) && PYTHONPATH=$$PWD $(COMPAT_BIN)/python tools/compat_check.py imports

# The CPU suite without the Triton tests, which the rehearsal runs (under the interpreter) as part of the
# GPU check's selection.
test-compat: compat-build
	cd $(COMPAT_TREE) && PYTHONPATH=$$PWD $(COMPAT_BIN)/python -m pytest tests -m "not triton" -q -p no:cacheprovider

# The GPU test selection must collect as many tests there as in the main venv (every dependency present).
gpu-rehearsal: compat-build build
	expected=$$(TRITON_INTERPRET=1 $(BIN)/python -m pytest --collect-only -q -p no:cacheprovider \
	    -m "cuda or triton" tests | tail -n 1) && cd $(COMPAT_TREE) && rm -rf build/gpu-rehearsal && \
	    GPU_CHECK_REHEARSAL=1 GPU_CHECK_EXPECT_TESTS="$$expected" PYTHON=$(COMPAT_BIN)/python \
	    bash benchmarks/gpu_check.sh build/gpu-rehearsal

clean:
	rm -rf build build.lock meranet_fast/*.so *.egg-info $(COMPAT_TREE)
