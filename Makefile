# One command each: `make demo` runs a tiny job end to end; `make test` runs every test.
# Both create the virtual environment and install what they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install demo test test-fast test-lowest check bench browser-deps redis clean

# The CPU torch the tests run on is pinned in a constraints file, never in what users install.
$(STAMP): pyproject.toml constraints/cpu-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu-torch.txt -e '.[worker,s3,server,dev,trackers]'
	touch $(STAMP)

install: $(STAMP)

redis:
	bash scripts/install-redis.sh

browser-deps: $(STAMP)
	bash scripts/install-browser-deps.sh $(VENV)

demo: install
	$(VENV)/bin/ftkit demo

# `make test-fast` runs the tests FAST selects; `make test` checks from its own timings that they
# stay under FAST_BUDGET seconds of test time: on two processes, about half that in wall time, plus
# some 20 s to start, so `make test-fast` stays under 3 minutes (measured 2026-12-05: 122 s of test
# time in the full run, and `make test-fast` 82 s of wall time).
FAST        = not slow and not browser
FAST_BUDGET = 240
TIMINGS     = test-timings.xml

test: install redis browser-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --junitxml=$(TIMINGS)
	$(PY) scripts/check_durations.py $(TIMINGS) --select "$(FAST)" --budget $(FAST_BUDGET)

test-fast: install redis
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile -m "$(FAST)"

# The tests that load models, train, resume and stop workers, at the lowest versions allowed.
test-lowest: redis
	bash scripts/test-lowest.sh

check: install
	$(VENV)/bin/ruff check ftkit tests bench
	$(VENV)/bin/ruff format --check ftkit tests bench scripts
	$(VENV)/bin/mypy --ignore-missing-imports ftkit

bench: install redis
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .venv-lowest storage .pytest_cache $(TIMINGS)
