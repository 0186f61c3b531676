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

# Debian/Ubuntu packages the live-source tests need: a real RTSP camera on 127.0.0.1 (tests/rtsp_camera.py,
# GStreamer's gst-rtsp-server run by the system python3), and headless Chromium for the --serve page test.
# Run as root, or: make system-deps APT="sudo apt-get".
APT ?= apt-get
SYSTEM_DEPS := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav chromium

.PHONY: test test-quick demo install triton-env system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH)" -e ".[export,dev]"
	touch $(STAMP)

install: $(STAMP)

$(TRITON_STAMP): pyproject.toml clo_export/triton/serverenv.py | $(STAMP)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(PY) -m clo_export.triton.serverenv > $(TRITON_VENV)/requirements.txt
	$(TRITON_VENV)/bin/python -m pip install --quiet -r $(TRITON_VENV)/requirements.txt
	touch $(TRITON_STAMP)

triton-env: $(TRITON_STAMP)

test: $(STAMP) $(TRITON_STAMP)
	$(PY) -m pytest -q

# The quick tier: no venv or wheel installs, no servers, no signals, no full-size or whole-chain runs.
test-quick: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not install and not server and not signals and not gpu"

system-deps:
	$(APT) update
	DEBIAN_FRONTEND=noninteractive $(APT) install -y --no-install-recommends $(SYSTEM_DEPS)

demo: $(STAMP)
	$(VENV)/bin/clo-export demo --out demo-out

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info
