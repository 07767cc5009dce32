# Two commands do everything on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DEB_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data test demo bench figures clean

setup: $(STAMP) data

# Re-installs only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Fashion-MNIST: Debian's package when we are root with apt, else torchvision's download.
data: $(STAMP)
	@if $(PY) -m fedfish.data locate fashion-mnist >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: $$($(PY) -m fedfish.data locate fashion-mnist)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  $(PY) -m fedfish.data locate fashion-mnist; \
	else \
	  $(PY) -m fedfish.data download fashion-mnist; \
	fi

# Two workers: the Flower end-to-end tests run one at a time on one (tests/conftest.py), the rest on both.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: setup
	$(PY) -m simulations.demo

bench: setup
	$(PY) -m bench.fisher
	$(PY) -m bench.codec
	$(PY) -m bench.masked_step
	$(PY) -m bench.wire
	$(PY) -m bench.crossdevice
	$(PY) -m bench.robustness

# The committed figures, drawn by the notebook from the committed evidence (docs/results/), one
# folder per sweep; a sweep with no finished point yet has no figures.
SWEEPS_WITH_FIGURES := crossdevice crossdevice_resnet
figures: setup
	@for sweep in $(SWEEPS_WITH_FIGURES); do \
	  if ls docs/results/$$sweep/*/rounds.csv >/dev/null 2>&1; then \
	    echo "figures of $$sweep"; \
	    $(PY) -m simulations.notebooks communication_curves results=docs/results/$$sweep \
	      figures_dir=docs/figures/$$sweep || exit 1; \
	  fi; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
