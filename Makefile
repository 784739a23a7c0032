# make test: install what is missing, build the extension, lint, run the tests.
# make bench: measure (see bench/).
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: test install deps lint bench clean

test: install lint
	$(PYTHON) -m pytest -q tests

# torch only if absent: where pip is capped at torch 2.14.1 that is the CUDA 13.0 build,
# which lets the CUDA kernels compile without a GPU.
deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch
	$(PIP) install -q "setuptools>=64" wheel ninja "pytest>=7" numpy expecttest ruff

# Against the installed torch (no build isolation: the extension must match it).
install: deps
	$(PIP) install -q --no-build-isolation -e .
	@$(PYTHON) -c "import glu_fused; print('glu_fused backends:', glu_fused.backend_status())"

lint: deps
	$(PYTHON) -m ruff check .

bench: install
	$(PYTHON) bench/cpu_speed.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info glu_fused/_C*.so
