#!/usr/bin/env bash
# The benchmarks that matter most, on a GPU machine without network, in at most 9 minutes.
#
#   bash benchmarks/gpu-quick.sh [--dry-run] [--out DIR] [--wheels DIR]
#
# Before (with network, from the repository root): pip download pytorch-ood==0.4.0 --no-deps -d wheels
# On the GPU machine (repository root, wheels/ beside it): bash benchmarks/gpu-quick.sh
#
# - installs pytorch-ood (and typing-extensions if missing) from the wheels with pip --no-index
#   --no-deps into a private folder (the system's packages are left alone); gradood itself runs
#   from this checkout (PYTHONPATH=plugin), so the figures belong to this commit;
# - runs, each part under a wall-clock limit (SIGINT: pytest still writes what it timed):
#   1. benchmarks/test_speed_targets.py --gradood-gpu: every side-by-side ratio (GradNorm vs MSP, the
#      official loop and pytorch-ood; Lee & AlRegib vs forward + backward and GradUncertainty;
#      peak memory), 130 s;
#   2. benchmarks/test_throughput.py --gradood-gpu -k: every detector's images/s on ResNet-50 at 224 px
#      and BiT-S-R101x1 at 480 px, batches 64 and 256, fp32 and bf16, with peak memory, 130 s;
#   3. benchmarks/test_input_pipeline.py --gradood-gpu: extract_features against the decode ceiling
#      for each decoder (PIL, torchvision on the CPU, nvJPEG), nvJPEG's inputs against PIL's, 80 s;
#   4. the paper's whole flow on a generated miniature at the paper's image sizes
#      (benchmarks/paper_miniature.py): the plan with its estimate, both ResNet-20s trained
#      (--gradood-train --gradood-train-epochs 2), every row of Tables 1 and 6-9 measured, each
#      stage's time scaled to the paper's image counts, 200 s;
# - writes DIR/<gpu-name>.json (pytest-benchmark's JSON, all parts) and DIR/<gpu-name>.md (the
#   runs' gradood summaries, the paper flow's plan and stage times, then images/s per case). DIR: --out, else $GRADOOD_GPU_QUICK_OUT,
#   else benchmarks/results.
#
# --dry-run: the same steps on the CPU, without --gradood-gpu, on a tiny selection (seconds), into a
# new temporary folder unless --out or $GRADOOD_GPU_QUICK_OUT is given; the name is cpu-dry-run.
# $GRADOOD_GPU_QUICK_LIMIT_S: another limit per part (seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
dry_run=0
out=${GRADOOD_GPU_QUICK_OUT:-}
wheels=wheels
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --out) out=$2; shift ;;
        --wheels) wheels=$2; shift ;;
        *) echo "gpu-quick.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ((dry_run)) && [[ -z $out ]]; then
    out=$(mktemp -d)
fi
out=${out:-benchmarks/results}
mkdir -p "$out"
# its pytest runs are no xdist workers, also when this script runs inside one (a test under
# pytest -n): pytest-benchmark and the harness read these variables from the environment
unset PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT PYTEST_XDIST_TESTRUNUID
export PYTHONPATH="$work/site:$PWD/plugin:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"

# -- what is missing, from the wheels ------------------------------------------------------
for pair in pytorch_ood:pytorch-ood typing_extensions:typing-extensions; do
    module=${pair%%:*} distribution=${pair#*:}
    if ! "$PYTHON" -c "import $module" 2>/dev/null; then
        echo "installing $distribution from $wheels/"
        "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$wheels" \
            --target "$work/site" "$distribution"
    fi
done
"$PYTHON" -c "import gradood, pytorch_ood; print('gradood from', gradood.__file__)"
# the harness's pytest plugin: registered by the entry point where gradood is installed, else
# named here (gradood runs from the checkout)
plugin=()
if ! "$PYTHON" -c "
import sys
from importlib.metadata import entry_points
sys.exit(not any(e.name == 'gradood' for e in entry_points(group='pytest11')))"; then
    plugin=(-p gradood.harness.plugin)
fi

# -- the runs --------------------------------------------------------------------------------
if ((dry_run)); then
    name=cpu-dry-run
    device=()
    limit=${GRADOOD_GPU_QUICK_LIMIT_S:-60}
    pipeline_limit=$limit
    targets_k="resnet20-32px-b64-gradnorm-vs-msp-throughput"
    throughput_k="test_detector_throughput and resnet20-32px-b64-fp32 and (msp or gradnorm)"
    throughput_k="$throughput_k and not gradnorm-u and not gradnorm-v"  # GradNorm's factors
    pipeline_k="test_extraction_at_the_decode_limit and tensor"
    paper_k="(table6 or table7) and not Mahalanobis"
    paper_limit=$limit
    tiny=(--tiny)
else
    name=$("$PYTHON" -c "import torch, re; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
    device=(--gradood-gpu)
    limit=${GRADOOD_GPU_QUICK_LIMIT_S:-130}
    pipeline_limit=${GRADOOD_GPU_QUICK_LIMIT_S:-80}
    targets_k=""
    throughput_k="test_detector_throughput and (resnet50-224px or bit-s-r101x1-480px) and (-b64- or -b256-)"
    throughput_k="$throughput_k and not gradnorm-u and not gradnorm-v"  # as gradnorm costs
    pipeline_k=""
    paper_k=""
    paper_limit=${GRADOOD_GPU_QUICK_LIMIT_S:-200}
    tiny=()
fi
extra=()

run_part() {  # run_part PART FILE K [LIMIT]: one pytest run under the limit, its JSON and output
    local part=$1 file=$2 selection=$3 part_limit=${4:-$limit}
    local args=("$file" "${device[@]}" "${plugin[@]}" -p no:cacheprovider -q
        --gradood-report-dir "$work/reports" --gradood-cache-dir "$work/cache"
        --benchmark-json "$work/$part.json" "${extra[@]}")
    [[ -n $selection ]] && args+=(-k "$selection")
    echo "== $part: pytest ${args[*]} (limit ${part_limit} s)"
    local status=0
    timeout --signal=INT --kill-after=20 "$part_limit" "$PYTHON" -m pytest "${args[@]}" \
        2>&1 | tee "$work/$part.log" || status=$?
    echo "$status" >"$work/$part.status"
}

run_part targets benchmarks/test_speed_targets.py "$targets_k"
run_part throughput benchmarks/test_throughput.py "$throughput_k"
run_part pipeline benchmarks/test_input_pipeline.py "$pipeline_k" "$pipeline_limit"

echo "== paper: writing the miniature"
GRADOOD_MINIATURE=$("$PYTHON" benchmarks/paper_miniature.py "$work/miniature" "${tiny[@]}")
export GRADOOD_MINIATURE
extra=(-p paper_miniature --gradood-train --gradood-train-epochs 2
    --gradood-checkpoint-dir "$work/checkpoints" --gradood-report-dir "$work/paper-reports")
run_part paper benchmarks/test_paper_tables.py "$paper_k" "$paper_limit"
for report in "$work"/paper-reports/*/paper.md; do
    if [[ -f $report ]]; then  # (a bare `[[ ]] &&` would end the script under set -e)
        cp "$report" "$work/paper.md"
    fi
done

"$PYTHON" benchmarks/gpu_quick.py "$work" "$out/$name" targets throughput pipeline paper
echo "wrote $out/$name.json and $out/$name.md"
