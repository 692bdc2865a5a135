# Two entry points: `make book` builds the HTML book, `make test` runs the tests.
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV := .venv
ROOT := $(abspath .)
BIN := $(ROOT)/$(VENV)/bin
PROFILE ?= default
# Expensive results are cached by content here (see stagewise.book.cache); `make clean` drops them.
export STAGEWISE_CACHE ?= $(ROOT)/_build/cache

.PHONY: book test chromium bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Chapters run in Jupyter kernels whose output never reaches the console; they write their
# progress (chapter started, training and sampling bars, chapter time) to PROGRESS_LOG through
# stagewise.book.progress, and the build follows that file on the console (each page's own log is
# _build/run/PROFILE/PAGE/run.log).  The chapters' execution times are recorded per profile in
# _build/chapter_times.json (`python -m stagewise list` shows them).
PROGRESS_LOG := $(ROOT)/_build/progress.log

# The pages run JOBS at a time (default: one per core), then the book is built from them.
book: $(VENV)/.installed
	@mkdir -p $(ROOT)/_build && : > $(PROGRESS_LOG)
	@tail -n +1 -f $(PROGRESS_LOG) & follow=$$!; \
	PATH=$(BIN):$$PATH STAGEWISE_PROGRESS=$(PROGRESS_LOG) \
		$(BIN)/python -m stagewise build --profile $(PROFILE) $(if $(JOBS),--jobs $(JOBS)); \
	status=$$?; sleep 1; kill $$follow; exit $$status
	@echo "The book is built: open file://$(ROOT)/_build/html/index.html"

# The unit tests, every chapter executed once under the fast profile (its asserts are the claims),
# and the book built from those executed chapters and read in headless Chromium.
test: $(VENV)/.installed chromium
	PATH=$(BIN):$$PATH STAGEWISE_PROFILE=fast $(BIN)/python -m pytest $(PYTEST_ARGS)

# The rendering checks need Chromium (Debian's package): installed when missing and this user can
# (root with apt-get); otherwise the one command to run, at once.
chromium:
	@if [ -n "$$STAGEWISE_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: installing Chromium for the rendering checks (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	    echo "make test needs Chromium for its rendering checks: sudo apt-get install chromium"; exit 1; \
	fi

# Benchmarks against peers (bench/README.md); their extra requirements are bench-only.
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/bif_devinterp.py
	$(BIN)/python bench/lm_draw_cost.py
	$(BIN)/python bench/fused_update.py

clean:
	rm -rf _build
