# Two commands do all the set-up on a fresh clone:
#   make demo   - sample data -> shards -> verify -> train -> eval -> figures -> profile
#   make test   - the test suite (GPU tests are skipped without a GPU)
#
# TORCH picks the PyTorch build (on a GPU machine, e.g. TORCH="torch==2.13.0" from PyPI is a
# CUDA build); DALI picks the DALI extra matching the CUDA major version (cuda13 or cuda12).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DALI   ?= cuda13
DEMO_OUT ?= demo-out
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/alexnet: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(DALI),dev]"
	@touch $@

install: $(BIN)/alexnet

demo: install
	$(BIN)/alexnet demo --out $(DEMO_OUT)

test: install
	@$(BIN)/python -c "import nvidia.dali, webdataset, triton, boto3, moto.server" || \
	  { echo "make test: DALI, webdataset, triton, boto3 and moto[server] must be installed, or their tests would be skipped"; exit 1; }
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
