# The two commands a new user needs: `make demo` and `make test`. Both set up everything
# from nothing on a Debian machine: system packages, the venv, then the job.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mnistkit-installed
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
MLS := .venv-mlserver
MLS_STAMP := $(MLS)/.installed
export MNISTKIT_HOME ?= $(CURDIR)/.mnistkit
APT_PACKAGES := python3 python3-venv git docker.io docker-registry apache2-utils nginx-light debootstrap wrk
PYTEST_ARGS ?=
# not in images: the training torch (images name their own CPU torch), CUDA, and the test tools
IMAGE_EXCLUDE := torch|torchvision|triton|nvidia-|cuda-|mypy|pytest|pluggy|iniconfig|librt|pathspec|ruff

.PHONY: demo test bench system venv lock lock-mlserver clean typecheck lint

demo: system venv
	$(BIN)/mnistkit-pipeline $(DEMO_ARGS)

test: system venv lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: system venv
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/search_bench.py
	$(BIN)/python benchmarks/serve_bench.py
	MNISTKIT_HOME=$(MNISTKIT_HOME) $(BIN)/python benchmarks/v2_bench.py

typecheck: venv
	$(BIN)/python -m mypy mnistkit

lint: venv
	$(BIN)/ruff check mnistkit tests benchmarks tools
	$(BIN)/ruff format --check mnistkit tests benchmarks tools

# System packages the pipeline and its tests run for real: dockerd, a registry with
# htpasswd auth, nginx as the gateway, debootstrap for offline base images, wrk for load.
system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(STAMP) $(TOOLS_STAMP) $(MLS_STAMP)

# the system packages first (python3-venv among them), also under make -j
$(STAMP) $(TOOLS_STAMP) $(MLS_STAMP): | system

# MLServer 1.7 (the V2 server) needs protobuf>=5, which seldon-core 1.17.1 forbids: its own venv,
# with mnistkit installed from this checkout (the tests start `python -m mnistkit.launch_v2` from it)
$(MLS_STAMP): requirements-mlserver.lock pyproject.toml
	test -x $(MLS)/bin/pip || { rm -rf $(MLS); $(PYTHON) -m venv $(MLS) || { rm -rf $(MLS); exit 1; }; }
	$(MLS)/bin/python -m pip install -q --disable-pip-version-check -r requirements-mlserver.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(MLS)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(MLS)/bin/python -c "import mlserver, httptools, tritonclient.http, onnxruntime, mnistkit.serving_v2"
	touch $(MLS_STAMP)

# kubernetes-validate needs jsonschema>=4, which seldon-core 1.17.1 forbids: its own venv
$(TOOLS_STAMP): requirements-tools.lock
	test -x $(TOOLS)/bin/pip || { rm -rf $(TOOLS); $(PYTHON) -m venv $(TOOLS) || { rm -rf $(TOOLS); exit 1; }; }
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check -r requirements-tools.lock 2>&1 | grep -v "^WARNING: Location" || true
	$(TOOLS)/bin/kubernetes-validate --version
	touch $(TOOLS_STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/pip || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; }
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[all,test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import mnistkit, torch, seldon_core, docker, polyaxon"
	touch $(STAMP)

lock: venv
	{ echo "# Versions seen to install and work together on Debian 12 / Python 3.11 (pip -c this file)."; \
	  echo "# Regenerate with: make lock"; $(BIN)/pip freeze --exclude-editable; } > requirements.lock
	{ head -3 mnistkit/build/docker/constraints.txt; \
	  grep -v -E "^#|^($(IMAGE_EXCLUDE))[=_-]" requirements.lock | sort -u -f; } > constraints.tmp
	mv constraints.tmp mnistkit/build/docker/constraints.txt

lock-mlserver: $(MLS_STAMP)
	{ echo "# The MLServer venv (.venv-mlserver): MLServer 1.7.1 needs protobuf>=5, which seldon-core 1.17.1 forbids,"; \
	  echo "# so it cannot share .venv. Versions seen to install and work together (Debian 12 / Python 3.11)."; \
	  echo "# Regenerate with: make lock-mlserver"; $(MLS)/bin/pip freeze --exclude-editable; } > requirements-mlserver.lock

clean:
	rm -rf $(VENV) $(TOOLS) $(MLS) runs
