# Two commands do everything on a fresh machine (Python 3.11, PyPI reachable):
#   make demo   - set up .venv on first use, then run the demo on the embedded synthetic cohort
#                 (generate it, then notebooks 01-06 through papermill)
#   make test   - set up .venv on first use, then run the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, alone: 2.13.0 resolves to the local CPU build (no CUDA download)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ctbrainage.synth --profile demo --figure figures/synthetic_cohort.png
	mkdir -p runs/demo/notebooks
	$(VENV)/bin/papermill --progress-bar notebooks/01_preprocess.ipynb \
		runs/demo/notebooks/01_preprocess.ipynb -p profile demo
	$(VENV)/bin/papermill --progress-bar notebooks/02_lobes.ipynb \
		runs/demo/notebooks/02_lobes.ipynb -p profile demo
	for fold in 0 1 2 3 4; do \
		$(VENV)/bin/papermill --progress-bar notebooks/03_train.ipynb \
			runs/demo/notebooks/03_train_fold$$fold.ipynb -p profile demo -p fold $$fold || exit 1; \
	done
	$(VENV)/bin/papermill --progress-bar notebooks/04_evaluate.ipynb \
		runs/demo/notebooks/04_evaluate.ipynb -p profile demo -p figures_dir figures
	$(VENV)/bin/papermill --progress-bar notebooks/05_perturbation.ipynb \
		runs/demo/notebooks/05_perturbation.ipynb -p profile demo
	$(VENV)/bin/papermill --progress-bar notebooks/06_stats_figures.ipynb \
		runs/demo/notebooks/06_stats_figures.ipynb -p profile demo -p figures_dir figures

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check ctbrainage tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_synth.py

clean-demo:
	rm -rf runs/demo

# TotalSegmentator in its own venv (the [totalseg] extra), to check our messages against it
.PHONY: test-totalseg
TS_VENV := .venv-totalseg
test-totalseg:
	test -x $(TS_VENV)/bin/python || $(PYTHON) -m venv $(TS_VENV)
	$(TS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(TS_VENV)/bin/python -m pip install --quiet -e ".[dev,totalseg]"
	$(TS_VENV)/bin/python -m pytest tests/totalseg_real tests/test_totalseg.py -q
