# medical_etl: jobs and developer tasks. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help setup test lint doctor scrape load transform-stage enrich-stage telegram-login bench-load bench-transform bench-enrich

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(STAMP) ## build .venv from setup.cfg (rebuilt only when setup.cfg changes)

test: $(STAMP) ## run the test suite (uses 127.0.0.1:5432 when it answers, else the embedded server)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff over the code
	$(BIN)/ruff check medical_etl scripts monitor tests bench

doctor: $(STAMP) ## check configuration, database and tools
	$(BIN)/medical-etl doctor

scrape: $(STAMP) ## stage 1: Telegram channels to the data lake
	$(BIN)/python scripts/scrape_telegram_data.py $(SCRAPE_ARGS)

load: $(STAMP) ## stage 2: data lake to the raw tables in PostgreSQL
	$(BIN)/python scripts/load_raw_to_postgres.py

transform-stage: $(STAMP) ## stage 3: dbt build (DBT_ARGS=--full-refresh for a full rebuild)
	$(BIN)/python scripts/run_dbt_transformations.py $(DBT_ARGS)

enrich-stage: $(STAMP) ## stage 4: YOLO detection on new photos (YOLO_MODEL), then the detection models
	$(BIN)/python scripts/run_yolo_enrichment.py

telegram-login: $(STAMP) ## one interactive Telegram login; writes the session file (0600)
	$(BIN)/medical-etl telegram-login

bench-load: $(STAMP) ## benchmark the load stage on a 200,000-message synthetic lake (ratios vs same-run baselines)
	$(BIN)/python bench/bench_load.py

bench-transform: $(STAMP) ## benchmark dbt: full build vs incremental build after 1% new messages
	$(BIN)/python bench/bench_transform.py

bench-enrich: $(STAMP) ## benchmark YOLO enrichment vs a per-image model(path) loop on the real sample photos
	$(BIN)/python bench/bench_enrich.py
