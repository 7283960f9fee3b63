# hccnode: `make run` starts the node on its embedded defaults; `make test` installs
# everything the tests need (system packages included) and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SYSTEM_TOOLS := storescu storescp echoscu dsrdump dciodvfy Orthanc openssl chromium chromedriver pdftotext npm
ORTHANC_PYTHON := /usr/share/orthanc/plugins/libOrthancPython.so
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
# Debian's PostgreSQL server binaries: the tests start a throwaway cluster with them (tests/pg_support.py).
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
VIEWER_DIR ?= .viewer

.PHONY: run test venv system-deps viewer-deps viewer viewer-check bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/hccnode serve

# Installs dcmtk, dicom3tools, Orthanc (with its Python and DICOMweb plugins), Chromium (headless
# browser for the status page and OHIF tests), npm (fetches OHIF) and PostgreSQL (the second store
# engine's tests) when any is missing.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	[ -f $(ORTHANC_PYTHON) ] || missing="$$missing orthanc-python"; \
	[ -f $(ORTHANC_DICOMWEB) ] || missing="$$missing orthanc-dicomweb"; \
	[ -n "$(PG_CTL)" ] || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools orthanc orthanc-python orthanc-dicomweb openssl chromium chromium-driver poppler-utils npm postgresql >/dev/null; \
	fi

# OHIF's prebuilt viewer, the pinned @ohif/app version (hccnode/viewer/install.py), in $(VIEWER_DIR)/.
viewer-deps: system-deps venv
	$(VENV)/bin/hccnode viewer install --dir $(VIEWER_DIR)

# Orthanc + OHIF + a node on loopback, a phantom study sent through them; prints the OHIF URL.
viewer: viewer-deps
	$(VENV)/bin/hccnode viewer serve --dir $(VIEWER_DIR)

# The same, opened in headless Chromium: viewer-check/result.json and screenshots.
viewer-check: viewer-deps
	$(VENV)/bin/hccnode viewer check --dir $(VIEWER_DIR) --out viewer-check

# Two test processes, each module's tests in one of them (module fixtures are built once).
test: viewer-deps
	$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile $(PYTEST_ARGS)

bench: venv
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) hccnode-data $(VIEWER_DIR) viewer-check
