# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The main job: the categorical VAE of Jang et al. on the embedded 8x8 digits (offline), one run
# per estimator, two at a time (the costliest first, so the others run beside it), then the
# comparison table (runs/demo/report.md, PNG figures).
DEMO_ESTIMATORS := local-reparam sf sf-ma sf-loo nvil muprop st gs st-gs

# "The core needs torch alone", checked: a second environment with torch, pytest and hypothesis
# only (the package without extras) runs the core's tests and doctests; a test there that needs
# an optional package (numpy, networkx, entmax, ...) skips.
CORE_VENV := .venv-core
CORE_STAMP := $(CORE_VENV)/.installed
CORE_TESTS := tests/distributions tests/mappings tests/structured tests/estimators tests/testing \
	tests/test_schedules.py tests/test_validation.py tests/test_layers.py \
	src/latentgrad/distributions src/latentgrad/mappings src/latentgrad/structured \
	src/latentgrad/estimators src/latentgrad/testing src/latentgrad/schedules.py \
	src/latentgrad/__init__.py src/latentgrad/_validation.py src/latentgrad/_numerics.py

.PHONY: demo test test-core docs lint bench clean tables

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,experiments,docs,ray]"
	touch $(STAMP)

demo: $(STAMP)
	printf '%s\n' $(DEMO_ESTIMATORS) | xargs -P 2 -I{} $(BIN)/latentgrad run vae \
		--config configs/vae-digits-demo.json --estimator {} --out runs/demo --threads 1 --quiet
	$(BIN)/latentgrad report runs/demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(CORE_VENV)/bin/python || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CORE_VENV)/bin/python -m pip install --quiet -c constraints.txt torch pytest hypothesis
	$(CORE_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(CORE_STAMP)

# torch warns once at import that numpy is missing; that warning is not ours to turn into an error.
test-core: $(CORE_STAMP)
	$(CORE_VENV)/bin/python -m pytest -m "not slow" -q -p no:cacheprovider \
		-W "ignore:Failed to initialize NumPy:UserWarning" $(CORE_TESTS)

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
	$(BIN)/python benchmarks/bench_local.py
	$(BIN)/python benchmarks/bench_ssvae.py
	$(BIN)/python benchmarks/bench_successors.py
	$(BIN)/python benchmarks/bench_bitvae.py
	$(BIN)/python benchmarks/bench_lpsparsemap.py

# The result tables of README.md and docs/*.md, regenerated from the records in results/.
tables: $(STAMP)
	$(BIN)/latentgrad report --update-readme

clean:
	rm -rf $(VENV) $(CORE_VENV) build site *.egg-info src/*.egg-info
