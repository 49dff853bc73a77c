# The README's two commands: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help builds cluster-builds check test test-unit test-integration test-controllers test-cluster test-e2e bench demo demo-down chart-crds venv system-packages controlplane promtool kube-router kube-score keda checkov scan images up down status clean

help:
	@echo "make demo   - run the main job on this machine (devcluster + operator + sample app)"
	@echo "make test   - install what the tests need and run the whole suite"
	@echo "make check  - lint and the tiers that need no cluster (unit, controllers): about a minute"
	@echo "make test-unit | test-integration | test-controllers | test-cluster | test-e2e - one tier"
	@echo "make up | down | status - the local devcluster in .devcluster/default"
	@echo "make scan   - checkov and kube-score over the chart and the operator's children (docs/security.md)"
	@echo "make bench  - every benchmark in turn, the summary table of docs/benchmarks.md rewritten (BENCH_ARGS=--quick, --only NAME)"

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests run for real (we run as root); tests start their own servers on
# free ports (apt's attempt to start the system services is refused here, which is harmless).
# The devcluster's nodes: containerd, runc, CNI plugins, iptables, iproute2 (netns, bridges), ipset
# (kube-router's NetworkPolicy firewall);
# its images: debootstrap (the Debian base), docker.io (a private dockerd builds them), gcc and
# libc6-dev (the static pause binary).
DEBIAN_PACKAGES := redis-server rabbitmq-server containerd runc containernetworking-plugins iptables \
	ipset iproute2 kmod util-linux debootstrap docker.io gcc libc6-dev ca-certificates python3 python3-venv
system-packages:
	@missing=$$(for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$package 2>/dev/null | grep -q '^install ok installed' || echo $$package; \
	done); \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi

# Builds once into ~/.cache/celery-operator (about 7 minutes cold on 2 cores), then finds it.
controlplane: venv
	$(VPY) -m devcluster build

# promtool from the Prometheus Go module, for the chart's alert rules (devcluster/promtool.py):
# built once into ~/.cache/celery-operator/promtool-<version>, then found.
promtool: venv
	$(VPY) -m devcluster promtool

# kube-router's firewall, the nodes' NetworkPolicy engine, from its Go module (devcluster/kuberouter.py):
# built once into ~/.cache/celery-operator/kube-router-<version>, then found.
kube-router: venv
	$(VPY) -m devcluster kube-router

# kube-score from its Go module, for the security scan (devcluster/kubescore.py): built once into
# ~/.cache/celery-operator/kube-score-<version>, then found.
kube-score: venv
	$(VPY) -m devcluster kube-score

# KEDA's operator and metrics server from its Go module (devcluster/keda.py), built once into
# ~/.cache/celery-operator/keda-<version>, and the `keda` image of both; tests/cluster/test_keda.py
# runs them in a devcluster (devcluster/keda_deploy.py).
keda: venv system-packages
	$(VPY) -m devcluster keda
	$(VPY) -m devcluster images keda

# checkov in a venv of its own: it pins old versions of libraries the test venv needs newer
# (packaging), so it stays out of the dev extra.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

checkov: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# checkov and kube-score over the rendered chart and the example's children (tests/helpers/scan.py):
# prints every finding, and fails on one docs/security.md does not accept.
scan: venv controlplane kube-score checkov
	$(VPY) -m tests.helpers.scan

# Every image the devcluster runs, built here and cached in ~/.cache/celery-operator/images
# (devcluster/images.py: about 10 minutes cold on 2 cores, then found at once).
images: venv system-packages
	$(VPY) -m devcluster images

# What the cluster and e2e tiers need, built side by side (each cached once built). KEDA, the longest
# cold build (about 6 minutes) and needed by tests/cluster/test_keda.py alone, is left out of
# CLUSTER_BUILDS: `make test` builds it while the other modules run, and that module waits for it.
CLUSTER_BUILDS := controlplane promtool kube-router kube-score checkov images
cluster-builds: venv system-packages
	$(MAKE) --no-print-directory --output-sync=target -j $(words $(CLUSTER_BUILDS)) $(CLUSTER_BUILDS)

builds: cluster-builds keda

# The whole suite. The tiers that need no cluster run while the builds do; then every module that
# waits on brokers, clusters or workers runs on $(TEST_WORKERS) parallel workers, each with a devcluster
# (and an operator) of its own, longest modules first (tests/durations.json). JUnit reports in
# $(REPORTS)/; the table of where the time went is printed at the end (tests/helpers/durations.py).
TEST_WORKERS ?= 2
REPORTS := .test-reports
test: venv system-packages
	@mkdir -p $(REPORTS)
	@$(MAKE) --no-print-directory cluster-builds > $(REPORTS)/builds.log 2>&1 & builds=$$!; \
	$(VPY) -m pytest -m "unit or controllers" --junitxml=$(REPORTS)/pure.xml $(PYTEST_ARGS); pure=$$?; \
	wait $$builds; built=$$?; cat $(REPORTS)/builds.log; \
	if [ $$built -ne 0 ]; then echo "make cluster-builds failed" >&2; exit $$built; fi; \
	$(MAKE) --no-print-directory keda > $(REPORTS)/keda.log 2>&1 & keda=$$!; \
	$(VPY) -m pytest -m "not (unit or controllers)" -n $(TEST_WORKERS) --dist loadfile \
		--junitxml=$(REPORTS)/real.xml $(PYTEST_ARGS); real=$$?; \
	wait $$keda; kedabuilt=$$?; cat $(REPORTS)/keda.log; \
	$(VPY) -m tests.helpers.durations $(REPORTS)/pure.xml $(REPORTS)/real.xml; \
	exit $$(( pure || real || kedabuilt ))

# The edit-test loop: lint, then the pure tiers (unit, controllers) on $(TEST_WORKERS) workers.
check: venv
	$(VPY) -m ruff check operator devcluster tests bench app
	$(VPY) -m pytest -m "unit or controllers" -n $(TEST_WORKERS) -q $(PYTEST_ARGS)

test-unit: venv
	$(VPY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: venv system-packages
	$(VPY) -m pytest -m integration $(PYTEST_ARGS)

# converge, the scaler tick and the PeriodicJob sync against fakes of their ports: no cluster, no broker
test-controllers: venv
	$(VPY) -m pytest -m controllers $(PYTEST_ARGS)

test-cluster: builds
	$(VPY) -m pytest -m cluster -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-e2e: builds
	$(VPY) -m pytest -m e2e -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every bench/bench_*.py in turn with its documented arguments (bench/runner.py: about an hour on
# 2 cores), each on a devcluster of its own; rewrites the summary table of docs/benchmarks.md.
BENCH_ARGS ?=
bench: venv system-packages controlplane kube-router keda images
	$(VPY) -m bench $(BENCH_ARGS)

# A devcluster in .devcluster/demo, the chart installed, app/examples applied, a burst watched
# as the workers scale from zero and back; the cluster keeps running until `make demo-down`.
demo: venv system-packages controlplane kube-router images
	$(VPY) -m devcluster.demo

demo-down: venv
	$(VPY) -m devcluster down --dir .devcluster/demo

# crds/ is the only source of the CRDs; the chart carries copies (a test fails when they differ)
chart-crds:
	rm -f charts/celery-operator/files/crds/*.yaml && cp crds/*.yaml charts/celery-operator/files/crds/

up: controlplane kube-router images
	$(VPY) -m devcluster up

down: venv
	$(VPY) -m devcluster down

status: venv
	$(VPY) -m devcluster status

clean: down
	rm -rf $(VENV) $(CHECKOV_VENV) .devcluster .pytest_cache $(REPORTS)
