# medical_etl: jobs and developer tasks. `make` alone lists the targets; `make jobs` lists each job's stages.
#
# A job runs its stages in the order its JOB line gives (the jobs section below: the only place a job
# is defined; `medical-etl job` and run_job() read these lines too). One runner,
# `medical-etl job NAME`, runs them under one lock and one run id, each stage in its own process
# with a time limit and retries, every run in the run log; a failed stage stops the ones after it
# (non-zero exit). Two jobs started together (`make -j4 pipeline scrape-load`, or cron and a person)
# never overlap: the second finds the lock taken and records `skipped`. stage-* targets run one
# stage on its own.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ETL := $(BIN)/medical-etl
# Weights for the demo: the shared int8 YOLOv8n where present, else Ultralytics' yolov8n.pt (downloaded).
DEMO_YOLO_MODEL ?= $(firstword $(wildcard $(MEDICAL_ETL_SHARED)/models/yolov8n_int8.onnx \
                     $(CURDIR)/../shared/models/yolov8n_int8.onnx) yolov8n.pt)
DEMO_ENV := DB_HOST= TELEGRAM_SOURCE=sample YOLO_MODEL=$(DEMO_YOLO_MODEL) \
            YOLO_OFFLINE=$(if $(filter yolov8n.pt,$(DEMO_YOLO_MODEL)),0,1)

.PHONY: help setup test lint doctor demo dbt jobs \
        stage-scrape stage-load stage-transform stage-enrich monitor report telegram-login \
        install-cron uninstall-cron backup restore bench-load bench-transform eval-products bench-enrich bench-idle bench-monitor clean \
        system-deps serve status bench-api dagster

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,dagster]'
	touch $@

setup: $(STAMP) ## build .venv from setup.cfg (rebuilt only when setup.cfg changes)

test: $(STAMP) system-deps ## run the test suite (uses 127.0.0.1:5432 when it answers, else the embedded server)
	$(BIN)/python -m pytest -q

# Debian's Chromium renders monitor/report.html and the dashboard in the browser tests, and Debian's systemd
# provides systemd-analyze, which checks deploy/systemd's units (verify) and timers (calendar).
# $(call apt_install,PROGRAM,PACKAGE,WHY): install PACKAGE with apt-get when PROGRAM is missing.
define apt_install
	@command -v $(1) >/dev/null 2>&1 && exit 0; \
	echo "system-deps: installing Debian's $(2) with apt-get: $(3)"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "system-deps: cannot install $(2): not root and no password-less sudo." >&2; \
	     echo "  Install it yourself (sudo apt-get install $(2)), or run the other tests: .venv/bin/python -m pytest -q -k 'not $(2)'" >&2; \
	     exit 1; fi; \
	command -v apt-get >/dev/null 2>&1 || { echo "system-deps: no apt-get here: install $(2) with your system's package manager" >&2; exit 1; }; \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(2) >/dev/null \
	  || { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(2) >/dev/null; } \
	  || { echo "system-deps: apt-get could not install $(2) (see the messages above)" >&2; exit 1; }; \
	echo "system-deps: $(2) installed ($$(command -v $(1)))"
endef

system-deps: ## install Debian's chromium and systemd (browser and unit tests) when missing; needs root or sudo
	$(call apt_install,chromium,chromium,the browser tests render the monitor report and the dashboard)
	$(call apt_install,systemd-analyze,systemd,the tests check deploy/systemd's units with systemd-analyze)

lint: $(STAMP) ## ruff over the code
	$(BIN)/ruff check medical_etl scripts monitor tests bench setup.py

doctor: $(STAMP) ## check configuration, database and tools
	$(ETL) doctor

demo: $(STAMP) ## the whole pipeline on the embedded PostgreSQL and the shipped sample, then a report
	$(DEMO_ENV) $(ETL) job pipeline
	$(DEMO_ENV) $(ETL) report
	@echo "Next: make monitor (alerts and a verdict), make dbt ARGS='show --select dim_channels', eval \"\$$($(ETL) env)\" for psql"

dbt: $(STAMP) ## run dbt against the configured database, embedded included (ARGS='build', ARGS='show --select dim_channels')
	$(ETL) dbt $(ARGS)

# --- jobs -----------------------------------------------------------------------------------------
# Each job on one line: its stages in run order, its options, and after # what it is for. These lines
# are the jobs' only definition: `medical-etl job` (run_job), its help, `make jobs`, Dagster's jobs and
# the crontab's comments read them (medical_etl/jobs/definitions.py). Options: --full-refresh (dbt
# rebuilds every model), --refresh-days N (the scrape re-reads N days of posts for their view counts),
# --lock-wait S (wait up to S seconds for a running job instead of recording `skipped`; LOCK_WAIT overrides).
JOB.pipeline    := scrape load transform enrich  # the daily run
JOB.weekly      := scrape load transform enrich --full-refresh --refresh-days 30 --lock-wait 10800  # Sunday: everything rebuilt
JOB.scrape-load := scrape load  # incremental updates only (no dbt, no YOLO)
JOB.transform   := transform  # model changes on existing data
JOB.enrich      := enrich  # re-analysis (new weights)
JOBS := $(sort $(patsubst JOB.%,%,$(filter JOB.%,$(.VARIABLES))))
.PHONY: $(JOBS)

$(JOBS): $(STAMP)
	$(ETL) job $@

jobs: $(STAMP) ## list the jobs (make pipeline, make weekly, ...): their stages and options, in run order
	@$(ETL) jobs

# --- single stages (no job lock) ------------------------------------------------
stage-scrape: $(STAMP) ## stage 1: Telegram channels to the data lake
	$(BIN)/python scripts/scrape_telegram_data.py

stage-load: $(STAMP) ## stage 2: data lake to the raw tables
	$(BIN)/python scripts/load_raw_to_postgres.py

stage-transform: $(STAMP) ## stage 3: dbt build (DBT_ARGS=--full-refresh for a full rebuild)
	$(BIN)/python scripts/run_dbt_transformations.py $(DBT_ARGS)

stage-enrich: $(STAMP) ## stage 4: YOLO on new photos, then the detection models
	$(BIN)/python scripts/run_yolo_enrichment.py

monitor: $(STAMP) ## alert rules over the run log; writes monitor/report.html; exit code = worst severity
	$(BIN)/python monitor/monitor_pipeline.py --html monitor/report.html

report: $(STAMP) ## print row counts, image categories and top products
	$(ETL) report

status: $(STAMP) ## the pipeline's assets: last runs, counts, freshness, what is stale (--json: ETL_ARGS=--json)
	$(ETL) status $(ETL_ARGS)

serve: $(STAMP) ## the analytical API and dashboard on API_HOST:API_PORT (default http://127.0.0.1:8000)
	$(ETL) serve

telegram-login: $(STAMP) ## one interactive Telegram login; writes the session file (0600)
	$(ETL) telegram-login

# --- scheduling ------------------------------------------------------------------
install-cron: $(STAMP) ## install the crontab entries for this user (idempotent)
	$(ETL) cron install

uninstall-cron: $(STAMP) ## remove exactly the entries install-cron added
	$(ETL) cron uninstall

DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
dagster: $(STAMP) ## optional: Dagster's UI over the same jobs, lock and run log on http://127.0.0.1:3000 (DAGSTER_HOME=data/dagster_home)
	DAGSTER_HOME='$(DAGSTER_HOME)' $(BIN)/python -m medical_etl.orchestration.dagster

# --- backups -------------------------------------------------------------------------
backup: $(STAMP) ## back up the database (pg_dump), the lake and the run log to BACKUP_PATH; keeps BACKUP_KEEP
	$(ETL) backup

restore: $(STAMP) ## restore BACKUP=<folder of BACKUP_PATH, or latest> into an empty database and folders (FORCE=1: over them)
	$(ETL) restore $${BACKUP:?set BACKUP=<backup folder name> or BACKUP=latest (make restore BACKUP=latest)} $(if $(FORCE),--force)

# --- benchmarks (ratios against baselines measured in the same run) ---------------
bench-load: $(STAMP) ## load stage on a 200,000-message synthetic lake vs execute_values and plain COPY
	$(BIN)/python bench/bench_load.py

bench-transform: $(STAMP) ## stage 3 on 100k and 1M posts: first build, 1,000 new (incremental), full refresh of nothing new; distinct texts; catalogue cold vs remembered
	$(BIN)/python bench/bench_transform.py

eval-products: $(STAMP) ## price precision / recall, generic and kind accuracy on the hand-labelled posts (bench/eval/)
	$(BIN)/python bench/eval_products.py

bench-enrich: $(STAMP) ## enrich on 480 distinct photos vs the bare per-core work and a model(path) loop
	$(BIN)/python bench/bench_enrich.py

bench-idle: $(STAMP) ## the daily job on a day with nothing new (median of 5) vs its first run
	$(BIN)/python bench/bench_idle.py

bench-monitor: $(STAMP) ## the monitor on a 100,000-record run log vs 10,000 and vs a load-everything baseline
	$(BIN)/python bench/bench_monitor.py

bench-api: $(STAMP) ## API latency on 100,000 and 1,000,000-post warehouses, 20 clients; dashboard first load
	$(BIN)/python bench/bench_api.py

clean: ## remove dbt target and logs folders
	rm -rf medical_warehouse/target medical_warehouse/logs
