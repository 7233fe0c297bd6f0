# kmtools: `make demo` and `make test` each create .venv (pip) when it is absent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first: these exact versions come from the local wheel cache on the dev
# machines; pyproject.toml itself only asks for ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint bench audit clean

$(BIN)/kmtools: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS) || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[dev,onnx,explain,heads]'
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
	$(MAKE) audit

# Supply-chain check: pip-audit needs the advisory database online; offline it reports
# that and we fall back to `pip check` (dependency consistency), see docs/reliability.md.
audit: venv
	-$(BIN)/pip check  # reports conflicts (e.g. torchattacks pins an old requests) without failing lint
	-$(BIN)/pip-audit --progress-spinner off --skip-editable 2>&1 | tail -5 || echo "pip-audit unavailable offline"

bench: venv
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/onepixel.py --device auto

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
