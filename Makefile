# kmtools: `make demo` and `make test` each create .venv (pip) when it is absent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first: these exact versions come from the local wheel cache on the dev
# machines; pyproject.toml itself only asks for ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint resolve bench audit clean

$(BIN)/kmtools: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS) || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(BIN)/kmtools

venv: $(BIN)/kmtools

demo: venv
	$(BIN)/kmtools demo --out demo-out --force

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: venv
	$(BIN)/ruff check kmtools cli tests benchmarks
	mkdir -p build/mypy && ln -sfn ../../cli build/mypy/kmtools_cli  # mypy sees cli/ as kmtools_cli
	$(BIN)/mypy
	$(MAKE) resolve
	$(MAKE) audit

# Every extra together must resolve (pip's resolver, dry run, nothing installed). Needs the
# package index, so it is part of `make lint`, not of `make test`.
resolve: venv
	$(BIN)/pip install --dry-run --ignore-installed --quiet --report /dev/null -e '.[all,dev]'
	@echo "resolve: kmtools[all,dev] resolves"

# Supply-chain check: pip-audit needs the advisory database online; offline it reports
# that and we fall back to `pip check` (dependency consistency), see docs/reliability.md.
audit: venv
	-$(BIN)/pip check  # reports conflicts (e.g. torchattacks, installed --no-deps, pins an old requests) without failing lint
	-$(BIN)/pip-audit --progress-spinner off --skip-editable 2>&1 | tail -5 || echo "pip-audit unavailable offline"

bench: venv
	$(BIN)/pip install -q --no-deps 'torchattacks>=3.5'  # no extra pulls it: its requests pin conflicts (pyproject.toml)
	$(BIN)/python benchmarks/onepixel.py --device auto

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
