# Two commands do everything on a fresh machine (Python 3.11, PyPI reachable):
#   make demo   - set up .venv on first use, then run the demo on the embedded synthetic cohort
#                 (generate it, then notebooks 01-07 through run_all.py and papermill)
#   make test   - set up .venv on first use, then run the test suite (make test-fast: the unit tier)
#   make lab    - also install JupyterLab, then open it on the repository (notebooks/ first)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo stacking robustness multitask new-scans docs test test-fast lab test-browser lint bench clean-demo check-notebooks update-notebooks

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, alone: 2.13.0 resolves to the local CPU build (no CUDA download)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ctbrainage.synth --profile demo --figure figures/synthetic_cohort.png
	$(PY) run_all.py --profile demo --figures figures

# After `make demo`: step 08, two encoders (3 seeds each) and linear stacking (about 20 minutes on 2 cores)
stacking: $(STAMP)
	$(PY) run_all.py --profile demo --from 8 --to 8 --figures figures

# Step 10 on the benchmark cohort: steps 01-03 first (about 25 min on 2 cores), then 2 x 2 conditions
# x 3 seeds on fold 0 (about 18 min)
robustness: $(STAMP)
	$(PY) run_all.py --profile benchmark --to 3
	$(PY) run_all.py --profile benchmark --from 10 --to 10 --figures figures

# After `make demo`: step 11, input conditions x targets, the multi-task ablation and the delayed
# children on a 24^3 grid (about 15 minutes on 2 cores)
multitask: $(STAMP)
	$(PY) run_all.py --profile demo --from 11 --to 11 --figures figures

# After `make demo`: step 09, the demo run's bundle on a new synthetic cohort of 40 children
new-scans: $(STAMP)
	$(PY) run_all.py --profile demo --from 9 --to 9

# After `make demo`: the result tables of README.md and docs/*.md, written from the run's files
docs: $(STAMP)
	$(PY) -m ctbrainage.views.docs runs/demo

# the whole suite (CI's command) in one worker per core (pytest-xdist; a module's tests stay on
# one worker, so its fixtures are built once; the longest modules first, tests/conftest.py), with
# the 15 slowest tests at the end
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadscope --no-loadscope-reorder --durations=15

# the unit tier for the edit loop: no run building, no papermill (tests marked integration)
test-fast: $(STAMP)
	$(PY) -m pytest -n auto --dist loadscope --no-loadscope-reorder -m "not integration" -q --durations=10

# JupyterLab on the repository, opened at notebooks/ (LAB_ARGS: e.g. --no-browser --port 8890)
LAB_ARGS ?=
$(VENV)/.lab-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,lab]"
	touch $@
lab: $(VENV)/.lab-installed
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --ServerApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The real-browser test (not in CI): Playwright drives Debian's chromium through JupyterLab and the
# run's exported pages. Needs `apt-get install chromium` first (see README).
$(VENV)/.browser-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,browser]"
	touch $@
test-browser: $(VENV)/.browser-installed
	@command -v chromium >/dev/null || { echo "test-browser needs Debian's chromium: apt-get update && apt-get install -y chromium"; exit 2; }
	CTBRAINAGE_BROWSER=1 $(PY) -m pytest tests/browser -v -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check ctbrainage tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_synth.py

clean-demo:
	rm -rf runs/demo

# Re-run the demo from the committed notebooks into runs/nbcheck with nbval: every stored output
# (tables, numbers, printed text; not images or widgets) must come out the same (about a demo's time)
check-notebooks: $(STAMP)
	rm -rf runs/nbcheck
	$(PY) -m ctbrainage.run.nbcheck notebooks --run-dir runs/nbcheck

# Maintainers: after `make demo`, make its executed notebooks the committed ones (fold 0 for 03),
# with the repository's paths made relative
update-notebooks:
	$(PY) -c "from ctbrainage.run.nbcheck import store_reference; store_reference('runs/demo/notebooks')"

# TotalSegmentator in its own venv (the [totalseg] extra), to check our messages against it
.PHONY: test-totalseg
TS_VENV := .venv-totalseg
test-totalseg:
	test -x $(TS_VENV)/bin/python || $(PYTHON) -m venv $(TS_VENV)
	$(TS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(TS_VENV)/bin/python -m pip install --quiet -e ".[dev,totalseg]"
	$(TS_VENV)/bin/python -m pytest tests/totalseg_real tests/test_totalseg.py -q
