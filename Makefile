# `make test` and `make demo` set up .venv from this repo's files alone, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 is what our machines and CI install; an unpinned torch
# would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The Triton server the tests start runs our Python-backend models in its own environment: Triton's
# Python backend stub needs numpy < 2 there, and our users' numpy is not ours to pin. Same Python as
# $(VENV) (the stub is built per Python version) and the same ONNX Runtime, so served detections match.
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# Exact versions of everything both environments get (made by `make pin`: tools/pin.py). Set empty to
# install the newest releases instead (CONSTRAINTS= TRITON_CONSTRAINTS=). The stamp keeps a copy of the
# file used, so tests/test_packaging.py knows the environment claims to be pinned.
CONSTRAINTS ?= constraints.txt
TRITON_CONSTRAINTS ?= constraints-triton.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
TRITON_PIN := $(if $(TRITON_CONSTRAINTS),-c $(TRITON_CONSTRAINTS))

# Debian/Ubuntu packages the live-source tests need: a real RTSP camera on 127.0.0.1 (tests/rtsp_camera.py,
# GStreamer's gst-rtsp-server run by the system python3), headless Chromium for the --serve page test, and
# python3-opencv (built with GStreamer) for the Jetson recipe's stand-in (tests/test_gstreamer.py).
# Run as root, or: make system-deps APT="sudo apt-get".
APT ?= apt-get
SYSTEM_DEPS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav chromium python3-opencv

.PHONY: test test-quick lint demo install triton-env system-deps pin clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(PIN)

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PY) -m pip install --quiet $(PIN) "$(TORCH)" -e ".[export,dev]"
	$(if $(CONSTRAINTS),cp $(CONSTRAINTS) $(STAMP),: > $(STAMP))

install: $(STAMP)

$(TRITON_STAMP): pyproject.toml clo_export/triton/serverenv.py $(TRITON_CONSTRAINTS) | $(STAMP)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip $(TRITON_PIN)
	$(PY) -m clo_export.triton.serverenv > $(TRITON_VENV)/requirements.txt
	$(TRITON_VENV)/bin/python -m pip install --quiet $(TRITON_PIN) -r $(TRITON_VENV)/requirements.txt
	$(if $(TRITON_CONSTRAINTS),cp $(TRITON_CONSTRAINTS) $(TRITON_STAMP),: > $(TRITON_STAMP))

triton-env: $(TRITON_STAMP)

test: $(STAMP) $(TRITON_STAMP)
	CLO_TRITON_ENV=$(TRITON_VENV) $(PY) -m pytest -q

# The quick tier: no venv or wheel installs, no servers, no signals, no full-size or whole-chain runs.
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not install and not server and not signals and not gpu"

# ruff (pinned in constraints.txt): the lint rules and line length are in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

system-deps:
	$(APT) update
	DEBIAN_FRONTEND=noninteractive $(APT) install -y --no-install-recommends $(SYSTEM_DEPS)

demo: $(STAMP)
	$(VENV)/bin/clo-export demo --out demo-out

# Rewrite constraints.txt and constraints-triton.txt from fresh, unconstrained environments under /tmp.
pin:
	$(PYTHON) tools/pin.py --python $(PYTHON)

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info
