# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck unit synth deploy bench clean

$(STAMP): requirements.txt requirements-dev.txt infra/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt -r infra/requirements.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m local.stack

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy app.py chalicelib local admin

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

synth: install
	cd infra && ../$(BIN)/python app.py

deploy: install
	cd infra && npx --yes aws-cdk@2 deploy --app "../$(BIN)/python app.py" --require-approval broadening

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) chalice.out infra/cdk.out .mypy_cache .ruff_cache .pytest_cache
