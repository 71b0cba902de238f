# sodd: `make run` sets everything up and serves the embedded default model on CPU;
# `make test` runs the whole test suite. `make setup` only installs.

VENV        := .venv
PDX_VENV    := .venv-paddlex
# Paddle Lite's wheels need CPython 3.10; pyenv provides it where the system Python is newer.
PYTHON310   := $(shell PYENV_VERSION=3.10.13 python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3.10)
PIP_FLAGS   := --disable-pip-version-check -q
ARGS        ?=

.PHONY: setup setup-paddlex run test lint proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON310)" || { echo "Python 3.10 is needed (pyenv install 3.10 or apt install python3.10)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON310) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test]'
	# SAHI, only for the slicing-agreement tests: its releases require an OpenCV that needs numpy 2,
	# which Paddle Lite cannot run with, and the merge functions compared need none of that.
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps 'sahi==0.12.*'
	touch $@

# PaddleX itself, in its own environment (it needs opencv-contrib-python, which cannot share one
# with opencv-python-headless): the parity tests compare the daemon's answers with it.
setup-paddlex: $(PDX_VENV)/.installed

$(PDX_VENV)/.installed: tests/paddlex-requirements.txt
	test -x $(PDX_VENV)/bin/python || $(PYTHON310) -m venv $(PDX_VENV)
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
	$(VENV)/bin/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/sodd/v1/*.proto

clean:
	rm -rf $(VENV) $(PDX_VENV) .pytest_cache
