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
	$(BIN)/dde run jobs/examples/shapes-masks.yaml --output out/shapes-masks
	@# references from the world the embedded model was trained on (it draws those scenes best)
	@test -f out/world-model/annotations/instances_train.json || \
	  $(BIN)/dde world export --out out/world-model --images 200 --split train --max-objects 3 --min-scale 0.3 --max-scale 0.55
	$(BIN)/dde run jobs/examples/shapes-img2img.yaml --output out/shapes-img2img
	$(BIN)/dde run jobs/examples/shapes-boxes.yaml --output out/shapes-boxes
	$(BIN)/dde run jobs/examples/shapes-controlnet.yaml --output out/shapes-controlnet
	$(BIN)/dde run jobs/examples/shapes-render.yaml --output out/shapes-render
	$(BIN)/dde status out/shapes-masks
	@echo
	@echo "Look at: out/shapes-masks/preview.png (the embedded diffusion model, txt2img on CPU, with"
	@echo "         masks from its own attention; coco/semantic/ holds the masks, 255 = uncertain),"
	@echo "         out/shapes-img2img/preview.png (img2img from rendered references),"
	@echo "         out/shapes-boxes/preview.png (img2img with boxes from the trained Detection-Adapter),"
	@echo "         out/shapes-controlnet/preview.png (Diffusion Synthesis: the embedded ControlNet draws the"
	@echo "         references' masks, so the labels are the masks; images a segmenter disagrees with are rejected),"
	@echo "         out/shapes-render/preview.png (rendered scenes with exact masks and boxes),"
	@echo "         and in each: README.md (dataset card), coco/instances.json, coco/images/, parquet/"

# ensure_chromium.sh installs Debian's chromium for the report's browser test; if it cannot,
# that test skips and says why, and the rest still run.
# lint-imports: the layers of pyproject.toml's [tool.importlinter] hold (no cycle, no upward import).
test: $(STAMP)
	$(BIN)/lint-imports
	-bash tests/tools/ensure_chromium.sh
	@# three workers, one test file each at a time (module fixtures stay in one process): most of the
	@# suite waits on subprocesses, retries and outages, so 2 cores run it in 14.7 min instead of 18.7
	$(BIN)/python -m pytest -q -ra -n 3 --dist loadfile tests

clean:
	rm -rf out .pytest_cache
