# The two commands of the README: `make demo` and `make test`. Both create the venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dde run jobs/examples/shapes-render.yaml --output out/shapes-render
	$(BIN)/dde status out/shapes-render
	@echo
	@echo "Look at: out/shapes-render/README.md (dataset card), out/shapes-render/coco/instances.json,"
	@echo "         out/shapes-render/coco/images/, out/shapes-render/parquet/"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf out .pytest_cache
