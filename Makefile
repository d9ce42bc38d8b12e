# One command each: `make demo` runs a tiny job end to end; `make test` runs every test.
# Both create the virtual environment and install what they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test test-fast check bench browser-deps redis clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,s3,server,dev]'
	touch $(STAMP)

install: $(STAMP)

redis:
	bash scripts/install-redis.sh

browser-deps: $(STAMP)
	bash scripts/install-browser-deps.sh $(VENV)

demo: install
	$(VENV)/bin/ftkit demo

test: install redis browser-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test-fast: install redis
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "not slow and not browser"

check: install
	$(VENV)/bin/ruff check ftkit tests bench
	$(VENV)/bin/ruff format --check ftkit tests bench scripts
	$(VENV)/bin/mypy --ignore-missing-imports ftkit

bench: install redis
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) storage .pytest_cache
