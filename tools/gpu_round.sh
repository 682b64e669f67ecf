#!/usr/bin/env bash
# One round on a GPU machine, in stages so that it fits a 10-minute command:
#   bash tools/gpu_round.sh build     # build the extension (timed, 16 jobs)
#   bash tools/gpu_round.sh test      # every test; memcheck, racecheck and synccheck of every
#                                     # kernel (SANITIZE_TOOLS to choose)
#   bash tools/gpu_round.sh bench     # the benchmark scripts, JSON + tables
#   bash tools/gpu_round.sh pack      # $OUT's logs into one results.tgz beside summary.txt (a
#                                     # remote runner may bring back a few files only)
# Logs and JSON go to $OUT (default benchmarks/results); a short summary is printed last.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# the system compiler: a toolchain wrapper that links libstdc++ statically (the GPU machine
# image's default CXX) makes every C++ exception a SIGSEGV, and setup.py refuses its build
export CXX=${CXX_FOR_LMKAN:-/usr/bin/g++} CUDAHOSTCXX=${CXX_FOR_LMKAN:-/usr/bin/g++}
PY=${PYTHON:-python3}

for stage in "$@"; do
  case "$stage" in
    build)
      start=$(date +%s%N)
      rm -rf build lmKAN/_C*.so
      TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} LMKAN_FORCE_CUDA=1 \
        $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
        || { tail -60 "$OUT/build.log"; exit 1; }
      echo "build (pip install -e ., ${MAX_JOBS:-16} jobs): $(( ($(date +%s%N) - start) / 1000000 )) ms" \
        | tee -a "$OUT/summary.txt"
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader \
        | tee -a "$OUT/summary.txt"
      $PY -c "import lmKAN; print(lmKAN.backend_info())" | tee -a "$OUT/summary.txt"
      ;;
    test)
      $PY -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
      echo "pytest rc=$?: $(tail -1 "$OUT/tests.log")" | tee -a "$OUT/summary.txt"
      grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
      for topic in 2d 1d reg; do
        for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
          timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool $tool $PY tools/sanitize_$topic.py \
            > "$OUT/sanitize_tmp.log" 2>&1
          rc=$?
          cat "$OUT/sanitize_tmp.log" >> "$OUT/sanitize.log"
          echo "sanitize $topic $tool rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_tmp.log" | tail -1)" \
            | tee -a "$OUT/summary.txt"
        done
      done
      rm -f "$OUT/sanitize_tmp.log"
      ;;
    bench)
      # BENCH_TOPICS: which scripts (default all); BENCH_TIMEOUT: seconds each.
      topics=${BENCH_TOPICS:-hessian 1d 2d}
      for topic in $topics; do
        timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/bench_$topic.py --json "$OUT/bench_$topic.json" \
          > "$OUT/bench_$topic.log" 2>&1
        echo "bench_$topic rc=$?" >> "$OUT/summary.txt"
      done
      for topic in $topics; do echo "== bench_$topic"; tail -25 "$OUT/bench_$topic.log"; done
      ;;
    pack)
      bash "$(dirname "$0")/pack_results.sh" "$OUT"
      ;;
    *) echo "unknown stage $stage (build, test, bench, pack)"; exit 2 ;;
  esac
done
echo "== summary"; cat "$OUT/summary.txt"
