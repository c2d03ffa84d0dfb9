#!/usr/bin/env bash
# Run the GPU feed benchmark on a machine with a CUDA PyTorch image and no package access.
#
#   bash benchmarks/gpu_run.sh RESULTS_DIR [BUNDLE] [-- gpu_feed.py options]
#
# BUNDLE (default .bundle, made by benchmarks/offline_bundle.py) is unpacked into a
# temporary site directory; RESULTS_DIR receives RESULTS-gpu.md (rewritten after every
# row, so a run cut short keeps what it measured) and the full log. PYTHON picks the
# interpreter (default python3).
set -uo pipefail
results=${1:?usage: gpu_run.sh RESULTS_DIR [BUNDLE] [-- gpu_feed.py options]}
shift
bundle=.bundle
if [[ $# -gt 0 && $1 != "--" ]]; then bundle=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$results"

site=$(mktemp -d)
if [[ -d $bundle ]]; then
  shopt -s nullglob
  wheels=("$bundle"/*.whl)
  archives=("$bundle"/*.tar.xz)
  if ((${#wheels[@]})); then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}" ||
      { echo "gpu_run: installing the bundle's wheels failed" >&2; exit 3; }
  fi
  for archive in "${archives[@]}"; do  # Python's own xz and tar: nothing else is assumed installed
    "$python" -c 'import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as archive:
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' \
      "$archive" "$site" || { echo "gpu_run: unpacking $archive failed" >&2; exit 3; }
  done
else
  echo "gpu_run: no bundle at $bundle; using the interpreter's own packages" >&2
fi

export PYTHONPATH="$site:$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 AWS_EC2_METADATA_DISABLED=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
"$python" "$here/benchmarks/gpu_feed.py" --out "$results/RESULTS-gpu.md" --work "${TMPDIR:-/tmp}/gpu_feed_work" "$@" \
  2>&1 | tee "$results/gpu_feed.log"
status=${PIPESTATUS[0]}
rm -rf "$site"
exit "$status"
