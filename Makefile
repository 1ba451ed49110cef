# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check
STAMP  := $(VENV)/.installed
# The CDK libraries are large and only synthesis needs them: `make run` does without.
INFRA_STAMP := $(VENV)/.installed-infra

.PHONY: install install-infra run test lint typecheck synth deploy bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -r requirements-dev.txt
	touch $(STAMP)

$(INFRA_STAMP): $(STAMP) infra/requirements.txt
	$(PIP) -r requirements-dev.txt -r infra/requirements.txt
	touch $(INFRA_STAMP)

install: $(STAMP)

install-infra: $(INFRA_STAMP)

run: install
	$(BIN)/python -m local.stack

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# tests/ is left out of the first run; the second holds the fakes, and every store the contract
# tests run against, to the ports they implement.
typecheck: install
	$(BIN)/mypy app.py chalicelib local admin
	$(BIN)/mypy tests/fakes.py tests/fakes_conform.py tests/contract/stores.py

test: install-infra lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

synth: install-infra
	cd infra && ../$(BIN)/python app.py $(CDK_ARGS)

deploy: install-infra
	cd infra && npx --yes aws-cdk@2 deploy --app "../$(BIN)/python app.py" --require-approval broadening $(CDK_ARGS)

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) chalice.out infra/cdk.out build/lambda-deps .mypy_cache .ruff_cache .pytest_cache
