# The two commands: `make demo` and `make test`. Each creates/updates .venv itself.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dutrain-setup
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: venv photos lint test test-unit demo bench tracking-server clean

$(STAMP): pyproject.toml requirements/constraints-cpu.txt scripts/setup_env.sh scripts/fix_torchvision_cpu.sh dutrain/data/photos.json
	VENV=$(VENV) scripts/setup_env.sh
	$(PY) -m dutrain.data.photos install  # the packaged photos (a warning, not a stop, if one cannot be had)
	touch $(STAMP)

venv: $(STAMP)

# Real photographs of the `photos` source into ~/.cache/dutrain/photos ($$DUTRAIN_PHOTOS_DIR)
photos: $(STAMP)
	$(PY) -m dutrain.data.photos install --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check dutrain tests

test: lint
	$(PY) -m pytest tests -q

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

demo: $(STAMP)
	$(VENV)/bin/dutrain pipeline --config workflows/configs/pipeline/demo.yaml

bench: $(STAMP)
	for b in tests/benchmarks/bench_*.py; do $(PY) $$b; done

# The MLflow server of infra/ (infra/mlflow/serve.sh), on a laptop: 127.0.0.1 only, over the demo's
# SQLite store, artifacts in ./mlartifacts. MLFLOW_AUTH=basic adds users and passwords (mlflow[auth]).
MLFLOW_PORT ?= 5000
tracking-server: $(STAMP)
	MLFLOW_BIN=$(VENV)/bin/mlflow MLFLOW_BACKEND_STORE_URI=sqlite:///mlflow.db \
	MLFLOW_ARTIFACTS_DESTINATION=./mlartifacts MLFLOW_HOST=127.0.0.1 MLFLOW_PORT=$(MLFLOW_PORT) \
	MLFLOW_WORKERS=1 infra/mlflow/serve.sh

clean:
	rm -rf runs/ mlflow.db .pytest_cache
