#!/usr/bin/env bash
# The benchmark-only environment of benchmarks/bench_pyradplan.py: pyRadPlan (matRad's Python port) and
# rtautoplan side by side in one clean venv, .bench-venv at the repository root (git-ignored).
#
#     bash benchmarks/peer_env.sh [VENV]        # default VENV: .bench-venv
#
# pyRadPlan is never a dependency of the product or of its tests. Its full install pulls ~135 packages
# (pydantic_ai, huggingface_hub, safetensors, array_api_strict, …); none of them is needed to load TG-119,
# compute photon and proton pencil-beam dose influence and optimise. So everything below is installed with
# --no-deps at the exact versions that worked (2026-12-03, Python 3.11, Linux x86_64): pyRadPlan's core
# imports and their own dependencies, ipyopt (manylinux wheel with Ipopt 3.12.12 + MUMPS: pyRadPlan's
# default solver "ipopt"; without it pyRadPlan falls back to scipy's L-BFGS-B), and rtautoplan in
# editable mode without torch, gymnasium, pettingzoo, pynetdicom, scikit-image (the engine, the optimiser
# and the DVH code import none of them). numpy is 2.3.5 because pyRadPlan 0.5.0 requires numpy < 2.4.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.bench-venv}"
PY="${PYTHON:-python3}"

PACKAGES=(
    pyRadPlan==0.5.0 ipyopt==0.12.10
    numpy==2.3.5 scipy==1.17.1
    pydantic==2.13.5 pydantic_core==2.46.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0
    typing_extensions==4.16.0 typing-inspection==0.4.5 numpydantic==2.0.0
    array-api-compat==1.16.0 array-api-extra==0.11.5
    simpleitk==2.5.7 pydicom==3.0.2
    pymatreader==1.3.2 h5py==3.16.0 xmltodict==1.0.4
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 packaging==26.4
    pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0
    Pint==0.25.3 flexcache==0.3 flexparser==0.4 platformdirs==4.14.9
    tqdm==4.70.1 Jinja2==3.1.6 MarkupSafe==3.0.4 tzdata==2026.6
    numba==0.68.1 llvmlite==0.50.0
    threadpoolctl==3.8.0 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0
)

"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --no-deps "${PACKAGES[@]}"
"$VENV/bin/pip" install -q --no-deps -e "$ROOT"
"$VENV/bin/python" - <<'EOF'
import warnings
warnings.filterwarnings("ignore")
import ipyopt  # noqa: F401
from pyRadPlan import calc_dose_influence, fluence_optimization, generate_stf, load_tg119  # noqa: F401
from pyRadPlan.optimization.solvers import get_available_solvers
import rtautoplan.physics.dij, rtautoplan.physics.ion_dij, rtautoplan.optimize.lbfgs, rtautoplan.dvh  # noqa: F401,E401
print("peer env ok: solvers", sorted(get_available_solvers()))
EOF
