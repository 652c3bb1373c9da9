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
	@if [ -f engine/models/shapes/model_index.json ]; then \
	  $(BIN)/dde run jobs/examples/shapes-txt2img.yaml --output out/shapes-txt2img && \
	  echo "Embedded diffusion model (CPU): out/shapes-txt2img/preview.png, out/shapes-txt2img/parquet/"; \
	else echo "(embedded:shapes weights not present: skipped the diffusion demo)"; fi
	@echo
	@echo "Look at: out/shapes-render/preview.png (samples with masks and boxes), out/shapes-render/README.md"
	@echo "         (dataset card), out/shapes-render/coco/instances.json, coco/images/, parquet/"

# ensure_chromium.sh installs Debian's chromium for the report's browser test; if it cannot,
# that test skips and says why, and the rest still run.
test: $(STAMP)
	-bash tests/tools/ensure_chromium.sh
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf out .pytest_cache
