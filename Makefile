# make test: install what is missing, build the extension, lint, run the tests (minutes).
# make test-full: the same suites with every combination (README, Testing).
# make test-oldest: the same tests against the oldest torch supported (2.11, Python 3.12).
# make bench: measure (see bench/). make gpu-check: a first GPU run (see bench/gpu_check.py).
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: test test-full test-codegen test-cuda-emulated test-cpu-levels test-oldest gpu-check-dry-run install deps bench-deps lint bench \
	gpu-check wheelhouse clean

# Both cores (pytest-xdist): TEST_WORKERS=0 runs the suite in one process. `loadscope` hands
# each worker whole modules, so that a module's fixtures (a compile) run once, in the order
# tests/conftest.py collects them (the compiles first), not reordered by their sizes.
TEST_WORKERS ?= auto
PYTEST := $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# What nvcc and Triton's compiler make of the kernels, checked without a GPU (registers,
# spills, vector widths, SASS per element): minutes of compiling, so a tier of their own, kept
# out of `make test`'s loop; CI runs it (.ci/run), and `make test-full` with sm_80 as well.
CODEGEN_SUITES := tests/test_cuda_codegen.py tests/test_cuda_occupancy.py tests/test_cuda_sass.py \
	tests/test_cuda_division.py tests/test_triton_codegen.py

test: install lint
	$(PYTEST) tests $(addprefix --ignore=,$(CODEGEN_SUITES))
	$(MAKE) test-cuda-emulated
	$(MAKE) test-cpu-levels

test-codegen: install
	$(PYTEST) $(CODEGEN_SUITES)

# The longer tier: every covering design as its full product (tests/covering.py), Triton's
# interpreter included, and the codegen suites for sm_80 as well as sm_90.
test-full: install lint
	GLU_FUSED_TEST_FULL=1 $(PYTEST) tests
	GLU_FUSED_TEST_FULL=1 $(MAKE) test-cuda-emulated

# The suites' CPU cases again, with CPU tensors run through the CUDA kernels' thread code on
# the host ($GLU_FUSED_EMULATE_CUDA): the CUDA paths' indexing, vectors and tails, without a GPU.
EMULATED_SUITES := tests/test_numerics.py tests/test_extremes.py tests/test_determinism.py \
	tests/test_lean_mlp.py tests/test_fp8.py tests/test_bias.py \
	tests/test_autograd.py tests/test_gpu.py
# Under CI=true the CUDA kernels must be there: a CI that cannot build them fails, not skips.
test-cuda-emulated:
	@if $(PYTHON) -c "import sys, glu_fused._C as c; sys.exit(not c.WITH_CUDA)"; then \
		GLU_FUSED_EMULATE_CUDA=1 $(PYTHON) -m pytest -q -k "cpu or emulation" $(EMULATED_SUITES); \
	elif [ "$$CI" = true ]; then echo "CI: glu_fused was built without CUDA kernels"; exit 1; \
	else echo "glu_fused was built without CUDA kernels: no emulated run"; fi

# The suites' CPU cases again at every other SIMD level of the CPU kernels this host runs
# (ATEN_CPU_CAPABILITY lowers torch's level and, with it, the kernels'; the main run took the
# highest). tests/test_cpu_levels.py compares the levels' bits.
CPU_LEVEL_SUITES := tests/test_numerics.py tests/test_extremes.py tests/test_determinism.py \
	tests/test_lean_mlp.py tests/test_fp8.py tests/test_bias.py
test-cpu-levels:
	@for level in $$($(PYTHON) -c "from glu_fused.backends import extension as e; \
			print(*e.runnable_cpu_levels()[:-1])"); do \
		echo "CPU kernels at $$level:"; \
		ATEN_CPU_CAPABILITY=$$level $(PYTHON) -m pytest -q -k cpu $(CPU_LEVEL_SUITES) || exit 1; \
	done

# The oldest torch supported, as the GPU machine has it: torch 2.11.0 and triton 3.6.0 on
# Python 3.12 (pyenv's), in a virtual environment of its own. The extension is built in place
# beside the newest one's (another Python, another file name) and `make test`'s suites run.
OLDEST_PYTHON ?= $(shell pyenv prefix 3.12 2>/dev/null)/bin/python
OLDEST_VENV := .venv-oldest
OLDEST := $(OLDEST_VENV)/bin/python
OLDEST_PACKAGES := torch==2.11.0 triton==3.6.0 "setuptools>=64" wheel ninja "pytest>=7" \
	pytest-xdist numpy expecttest "transformers>=5" matplotlib parameterized
# Its CPU kernels are built for the one SIMD level torch runs here (GLU_FUSED_CPU_CAPABILITY):
# what is checked is torch 2.11's API, and `make test` has built and run every level. The
# codegen tier is left to `make test-codegen` (nvcc's is the same under any torch; Triton 3.6's
# compiles run on the GPU machine, whose `make gpu-check` runs them), so that CI keeps within
# its 30 minutes.
# Its build leaves the CUDA kernels out (GLU_FUSED_CUDA=0, a third of CI's time): their
# sources include no torch header, so `make test`'s build and emulated tier cover them for any
# torch; tests/test_build.py compiles the code that launches them (glu_ops.cpp, c10/cuda's
# stream and guard) against the oldest torch's headers instead.
# transformers' own model tests (tests/test_transformers_suite.py, 71 s of one process on
# torch 2.11) are `make test`'s: they hold our patch to transformers' behaviour, which the
# torch under both is not part of; tests/test_transformers.py still runs here. CI took 1842 s
# with them, over its 30 minutes.
OLDEST_LEFT_OUT := $(CODEGEN_SUITES) tests/test_transformers_suite.py
test-oldest:
	@test -x $(OLDEST) || $(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST) -m pip install -q $(OLDEST_PACKAGES)
	export GLU_FUSED_CUDA=0 GLU_FUSED_CPU_CAPABILITY=$$($(OLDEST) -c \
		"import torch; c = torch.backends.cpu.get_cpu_capability().lower(); \
		print(c if c in ('avx2', 'avx512') else 'default')") && \
	$(OLDEST) setup.py -q build_ext --inplace && \
	$(OLDEST) -c "import glu_fused, torch, triton; print('oldest:', torch.__version__, \
		triton.__version__, glu_fused.backend_status())" && \
	$(OLDEST) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder tests \
		$(addprefix --ignore=,$(OLDEST_LEFT_OUT))

# make gpu-check's stages on the CPU, small: its plumbing, so that a GPU run cannot die of a typo.
gpu-check-dry-run:
	$(PYTHON) bench/gpu_check.py --tiny

# torch only if absent: where pip is capped at torch 2.14.1 that is the CUDA 13.0 build,
# which lets the CUDA kernels compile without a GPU.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install triton
	$(PIP) install -q "setuptools>=64" wheel ninja "pytest>=7" pytest-xdist numpy expecttest ruff \
		parameterized
	@$(PYTHON) -c "import transformers" 2>/dev/null || $(PIP) install -q "transformers>=5"
	$(MAKE) bench-deps

# The benchmark's plots, and Liger-Kernel as a peer (its Triton kernels run on a GPU; the
# tests check our adapter to it in Triton's interpreter).
bench-deps:
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install -q matplotlib
	@$(PYTHON) -c "import liger_kernel" 2>/dev/null || $(PIP) install -q liger-kernel

# Against the installed torch (no build isolation: the extension must match it).
install: deps
	$(PIP) install -q --no-build-isolation -e .
	@$(PYTHON) -c "import glu_fused; print('glu_fused backends:', glu_fused.backend_status())"

lint: deps
	$(PYTHON) -m ruff check .

# On the GPU when there is one, else the CPU; BENCH_ARGS narrows it (bench/run.py --help).
bench: install
	$(PYTHON) bench/run.py $(BENCH_ARGS)

# On a machine with a CUDA GPU, offline: build for its GPU, GPU tests, compute-sanitizer,
# benchmark; results in bench/results/<gpu>/ (bench/gpu_check.py). No install step: it must
# run on what that machine has, plus wheelhouse/.
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# The wheels the GPU machine lacks (Python 3.12, no network there), for make gpu-check.
WHEELHOUSE_PACKAGES := liger-kernel expecttest pytest-xdist execnet
wheelhouse:
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d wheelhouse \
		$(WHEELHOUSE_PACKAGES)
	@ls wheelhouse

clean:
	rm -rf build *.egg-info glu_fused/_C*.so
