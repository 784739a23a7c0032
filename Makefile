# make test: install what is missing, build the extension, lint, run the tests.
# make bench: measure (see bench/).
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: test test-cuda-emulated install deps bench-deps lint bench clean

test: install lint
	$(PYTHON) -m pytest -q tests
	$(MAKE) test-cuda-emulated

# The suites' CPU cases again, with CPU tensors run through the CUDA kernels' thread code on
# the host ($GLU_FUSED_EMULATE_CUDA): the CUDA paths' indexing, vectors and tails, without a GPU.
EMULATED_SUITES := tests/test_numerics.py tests/test_extremes.py tests/test_determinism.py \
	tests/test_autograd.py tests/test_gpu.py
test-cuda-emulated:
	@if $(PYTHON) -c "import sys, glu_fused._C as c; sys.exit(not c.WITH_CUDA)"; then \
		GLU_FUSED_EMULATE_CUDA=1 $(PYTHON) -m pytest -q -k "cpu or emulation" $(EMULATED_SUITES); \
	else echo "glu_fused was built without CUDA kernels: no emulated run"; fi

# torch only if absent: where pip is capped at torch 2.14.1 that is the CUDA 13.0 build,
# which lets the CUDA kernels compile without a GPU.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) install triton
	$(PIP) install -q "setuptools>=64" wheel ninja "pytest>=7" numpy expecttest ruff
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

clean:
	rm -rf build *.egg-info glu_fused/_C*.so
