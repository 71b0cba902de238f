# sodd: `make run` sets everything up and serves the embedded default model on CPU;
# `make test` runs the whole test suite. `make setup` only installs.

VENV        := .venv
PDX_VENV    := .venv-paddlex
# CPython 3.10 where there is one (Paddle Lite's x86 wheels need it; pyenv provides it where the
# system Python is newer), else the system python3 when it is 3.10 to 3.12 (ARM boards: Debian 12
# has 3.11, Ubuntu 24.04 3.12; Lite has no wheel there to need 3.10).
PYTHON      := $(shell PYENV_VERSION=3.10.13 python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null \
                 || command -v python3.10 \
                 || python3 -c 'import sys; print(sys.executable if (3, 10) <= sys.version_info[:2] <= (3, 12) else "")' 2>/dev/null)
# pyproject leaves paddle2onnx out on aarch64 below Python 3.12: it requires onnxoptimizer there, which
# has no ARM wheel, and runs without it. setup adds it without its dependencies (the rest are listed).
PADDLE2ONNX := paddle2onnx==2.1.0
PIP_FLAGS   := --disable-pip-version-check -q
ARGS        ?=

.PHONY: setup setup-paddlex run test lint proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.10 to 3.12 is needed (apt install python3 python3-venv, or pyenv install 3.10)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) --only-binary :all: -e '.[test]'
	$(VENV)/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("paddle2onnx") is None)' \
		|| $(VENV)/bin/pip install $(PIP_FLAGS) --only-binary :all: --no-deps '$(PADDLE2ONNX)'
	# SAHI, only for the slicing-agreement tests: its releases require an OpenCV that needs numpy 2,
	# which Paddle Lite cannot run with, and the merge functions compared need none of that.
	$(VENV)/bin/pip install $(PIP_FLAGS) --only-binary :all: --no-deps 'sahi==0.12.*'
	touch $@

# PaddleX itself, in its own environment (it needs opencv-contrib-python, which cannot share one
# with opencv-python-headless): the parity tests compare the daemon's answers with it.
setup-paddlex: $(PDX_VENV)/.installed

$(PDX_VENV)/.installed: tests/paddlex-requirements.txt
	test -x $(PDX_VENV)/bin/python || $(PYTHON) -m venv $(PDX_VENV)
	$(PDX_VENV)/bin/pip install $(PIP_FLAGS) -r tests/paddlex-requirements.txt
	touch $@

run: setup
	$(VENV)/bin/sodd serve $(ARGS)

test: setup setup-paddlex
	$(VENV)/bin/ruff check .
	SODD_PADDLEX_PYTHON=$(CURDIR)/$(PDX_VENV)/bin/python $(VENV)/bin/pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# Regenerate the committed gRPC code after editing proto/ (tests check it is up to date).
proto: setup
	$(VENV)/bin/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/sodd/v1/*.proto proto/sodd/oip/*.proto

clean:
	rm -rf $(VENV) $(PDX_VENV) .pytest_cache
