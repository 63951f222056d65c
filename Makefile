# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The main job: the categorical VAE of Jang et al. on the embedded 8x8 digits (offline), one run
# per estimator, two at a time (the costliest first, so the others run beside it), then the
# comparison table (runs/demo/report.md, PNG figures).
DEMO_ESTIMATORS := local-reparam sf sf-ma sf-loo nvil muprop st gs st-gs

.PHONY: demo test docs lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,experiments,docs]"
	touch $(STAMP)

demo: $(STAMP)
	printf '%s\n' $(DEMO_ESTIMATORS) | xargs -P 2 -I{} $(BIN)/latentgrad run vae \
		--config configs/vae-digits-demo.json --estimator {} --out runs/demo --threads 1 --quiet
	$(BIN)/latentgrad report runs/demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The documentation site (docs/, mkdocs.yml) into site/; any warning (a docstring griffe cannot
# parse, a broken link or anchor, a page missing from the nav) fails the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/bench_mappings.py
	$(BIN)/python benchmarks/bench_gumbel.py
	$(BIN)/python benchmarks/bench_estimators.py
	$(BIN)/python benchmarks/bench_structured.py
	$(BIN)/python benchmarks/bench_sparsemap.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info
