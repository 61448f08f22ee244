#!/usr/bin/env bash
# Create or update .venv with the pinned CPU set (requirements/constraints-cpu.txt).
# Order matters (docs/environment.md): torch's CPU wheel first, so nothing pulls a CUDA torch;
# then everything else; then remove torchaudio/torchcodec (CUDA builds that break `import vllm`)
# and patch torchvision so it loads beside the CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {  # pip, minus the noise of this machine's partial local indexes; keeps pip's status
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 \
    | { grep -v -e "is ignored: it is neither" -e "BuildBackendWarning" || true; }
  return "${PIPESTATUS[0]}"
}
pip_install --upgrade "pip>=24" wheel setuptools
TORCH=$(grep -E '^torch==' requirements/constraints-cpu.txt | sed 's/+cpu//')
pip_install "$TORCH"
pip_install -c requirements/constraints-cpu.txt -e ".[cpu,dev]"
"$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec >/dev/null 2>&1 || true
scripts/fix_torchvision_cpu.sh "$VENV/bin/python"
"$VENV/bin/python" -c "import dutrain, ray, vllm, trl, mlflow, transformers; print('environment ok:', 'ray', ray.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
