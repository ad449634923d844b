# Sourced by scripts/bench and scripts/test: create or reuse .venv and install teachsim.
# torch==2.13.0 goes in first: an unpinned torch in a fresh venv would pull a multi-GB CUDA
# build, while this pin takes the CPU build. The package itself only asks for torch>=2.4.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
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
