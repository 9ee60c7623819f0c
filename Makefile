# The two commands of the README. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FASHION_MNIST_ROOT ?= /usr/share/datasets/fashion-mnist

.PHONY: demo test lint clean data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/svd-callback demo

test: $(STAMP)
	$(BIN)/ruff check svd_callback tests experiments
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check svd_callback tests experiments

# Fashion-MNIST for the paper-scale experiments: Debian's dataset-fashion-mnist package installs
# the four IDX files in $(FASHION_MNIST_ROOT) (nothing is downloaded at run time).
data:
	@if [ -f "$(FASHION_MNIST_ROOT)/train-images-idx3-ubyte.gz" ] && \
	    [ -f "$(FASHION_MNIST_ROOT)/t10k-labels-idx1-ubyte.gz" ]; then \
	  echo "Fashion-MNIST already in $(FASHION_MNIST_ROOT)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make data: apt-get not found. Install the Debian/Ubuntu package dataset-fashion-mnist," \
	    "or put the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz," \
	    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in" \
	    "a folder and pass --root FOLDER to the experiments." >&2; \
	  exit 1; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y dataset-fashion-mnist || { \
	    echo "make data: apt-get install failed; run '$$SUDO apt-get update' and try again" >&2; \
	    exit 1; }; \
	fi

clean:
	rm -rf $(VENV) runs lightning_logs
