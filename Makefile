# Two commands for a researcher: `make demo` and `make test` (`make test-fast` skips the slow tests). All set up
# .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

# Re-installs only when requirements.txt or pyproject.toml change, so a second `make setup` does nothing.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Lint and format checks first (ruff, configured in pyproject.toml), then the suite (slow tests included).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# The same without the tests marked slow (full-size models, DDP, subprocesses, the tiny recipes' training).
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow"

# The README's "Small runs on the CPU" commands for Food-101: synthetic data, `tiny` training, a sweep.
DEMO := data_root=demo_output/arrows log_dir=demo_output/result missing_table_root=demo_output/missing_tables/ \
	records_root=demo_output/records food101_class_num=10 exp_name=demo_food101 \
	missing_type='{"train": "both", "val": "both", "test": "both"}'

demo: $(STAMP)
	rm -rf demo_output
	$(PY) -m mdpl.data.synthetic food101 demo_output/raw --samples 400 --classes 10
	$(PY) make_arrow.py --dataset food101 --root demo_output/raw --out demo_output/arrows
	$(PY) run.py -l WARNING with task_finetune_food101 tiny $(DEMO)
	$(PY) run.py -l WARNING sweep with task_finetune_food101 tiny $(DEMO) \
		sweep_ratios='[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]' \
		load_path=$$(ls demo_output/result/demo_food101_seed42_from_/version_0/checkpoints/epoch=*.ckpt)

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
