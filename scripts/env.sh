# Sourced by scripts/bench, scripts/test and scripts/gpu-check: create or reuse .venv and
# install teachsim. torch==2.13.0 goes in first: an unpinned torch in a fresh venv would
# pull a multi-GB CUDA build, while this pin takes the CPU build. The package itself only
# asks for torch>=2.4.
#
# TEACHSIM_PYTHON=/path/to/python uses that interpreter as it is instead (no venv, nothing
# installed, src/ on PYTHONPATH): for a machine whose Python already has a CUDA build of
# torch and the other dependencies, e.g. a GPU machine without internet access.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${TEACHSIM_PYTHON:-}" ]; then
    EXE="$(command -v "$TEACHSIM_PYTHON")" || { echo "teachsim: TEACHSIM_PYTHON=$TEACHSIM_PYTHON: not found" >&2; exit 2; }
    EXE="$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")"   # absolute, links kept (a venv's python)
    BIN="$(mktemp -d)"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$EXE" > "$BIN/python"
    printf '#!/bin/sh\nexec "%s" -m teachsim "$@"\n' "$EXE" > "$BIN/teachsim"
    chmod +x "$BIN/python" "$BIN/teachsim"
    export PATH="$BIN:$PATH" PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    missing="$(python - <<'PY'
import importlib.util
need = ["numpy", "torch", "sklearn", "scipy", "pandas", "matplotlib", "ray", "tomli_w", "modAL"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)"
    if [ -n "$missing" ]; then
        echo "teachsim: TEACHSIM_PYTHON=$TEACHSIM_PYTHON lacks: $missing (install them, or unset TEACHSIM_PYTHON)" >&2
        exit 2
    fi
    return 0 2>/dev/null || exit 0
fi
VENV="${TEACHSIM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "teachsim: creating virtual environment $VENV" >&2
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.teachsim-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$BASH_SOURCE" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "teachsim: installing torch==2.13.0 (CPU) and teachsim[test] into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" >&2
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
