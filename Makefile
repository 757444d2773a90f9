PY ?= python3.11
VENV := .venv
PIP := $(VENV)/bin/pip install -q -c constraints.txt
SHARED ?= $(or $(SQUEEZENET_SHARED),../shared)

.PHONY: demo test lint install install-test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,ray,openvino,executorch,ncnn,hub]'
	touch $@

# export --format web and serve's in-browser mode copy onnxruntime-web (package.json) from here;
# Debian's nodejs and npm are installed when npm is missing; no package needs its install script
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   nodejs npm >/dev/null)
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

install: $(VENV)/.installed node_modules/.installed
install-test: $(VENV)/.installed-test node_modules/.installed
	@# the browser test drives Debian's chromium through chromedriver (installed when missing)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   chromium chromium-driver >/dev/null)

# the demo leaves every job runnable: each extra installed
demo: install
	$(PIP) -e '.[serve,openvino,ray,executorch,ncnn,hub]'
	$(VENV)/bin/squeezenet demo --shared $(SHARED)

test: install-test
	$(VENV)/bin/ruff check squeezenet tests benchmarks
	$(VENV)/bin/python -m pytest -q --durations=15

lint: install-test
	$(VENV)/bin/ruff check squeezenet tests benchmarks
	$(VENV)/bin/ruff format --check squeezenet tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info node_modules
