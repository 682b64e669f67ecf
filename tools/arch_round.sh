#!/usr/bin/env bash
# The sm_90 build and the Ampere-path build side by side on one Hopper GPU, each in its own
# copy of the tree (/tmp/lmkan-sm90, /tmp/lmkan-sm80). TORCH_CUDA_ARCH_LIST="8.0+PTX" holds
# only compute_80 code, which the driver compiles for the GPU at load time: the kernels' code
# below sm_90 (cp.async instead of bulk copies, scalar float atomics) then runs on the H200.
#
#   bash tools/arch_round.sh build          # both builds at once, half the jobs each, timed
#       # (on the H200's 16 cores two sm_90 builds side by side took 63-64 s, one after the
#       # other with 16 jobs 2 x ~50 s; 2026-12-03)
#   bash tools/arch_round.sh test           # pytest on both builds at once (one after the
#       # other on GPUs of at most 100 GB: memory): TEST_PATHS
#       # (default: tests), TEST_TIMEOUT seconds (default 540). The whole suite took more
#       # than 480 s on each build run side by side (2026-12-03): split it over two calls,
#       # e.g. TEST_PATHS="tests/test_cuda_2d*.py tests/test_cuda_regularizers.py" and the rest
#       # (on an H100, 2026-12-06: the 2D and 16-bit files 11 s, the files after
#       # test_export.py 108 s; test_export.py's two AOTInductor compiles took 47 and 89 s in
#       # an earlier run and did not finish in 240 s beside another pytest: give them a call)
#   bash tools/arch_round.sh sanitize       # memcheck, racecheck and synccheck of every kernel,
#       # both builds (SANITIZE_TOOLS, default "memcheck racecheck synccheck"; synccheck checks
#       # the barriers and the warp shuffles' masks, which memcheck and racecheck do not)
#       # (SANITIZE_TOPICS, default "2d 1d reg"; SANITIZE_2D_PART / SANITIZE_1D_PART, default
#       # all: a part of tools/sanitize_2d.py, e.g. few, or of sanitize_1d.py, e.g. float32;
#       # SANITIZE_BUILDS, default "sm90 sm80"; SANITIZE_TIMEOUT seconds, default 400: racecheck
#       # of all of sanitize_1d.py took more than 130 s in run K)
#   bash tools/arch_round.sh check          # test and sanitize at once (their settings as above)
#   bash tools/arch_round.sh bench          # bench_2d and bench_1d, one build after the other
#   bash tools/arch_round.sh buildall       # the whole default architecture list, timed
#   bash tools/arch_round.sh limits         # num_grids limits at 99 / 163 / 227 KB
#   BASE_TAR=base.tar bash tools/arch_round.sh compare
#       # a change against an earlier revision, in one run: `git archive REV -o base.tar`
#       # first (an untracked file travels to the GPU machine); both sm_90 builds, then
#       # bench_overhead (new, base, new) and bench_2d (BENCH2D_ARGS, default: the G8, G26
#       # and small cases at tiles 4 and 8, block 512) of each; COMPARE_1D=1 adds bench_1d at
#       # its default shape and at B=1024, 128 features, and COMPARE_1D_BUDGETS="163 99" the
#       # default shape at those shared-memory budgets (LMKAN_SMEM_BUDGET_KB); COMPARE_BITWISE=1
#       # tools/bitwise_outputs.py: the 2D ops' outputs of both builds, bit for bit; COMPARE_HESSIAN=1
#       # adds bench_hessian.py, COMPARE_CONV=1 bench_conv.py, COMPARE_PROFILE=1
#       # tools/profile_2d.py (PROFILE_ARGS) of new, base, new, base: per-kernel times;
#       # COMPARE_RUNS=1 tools/time_runs_plan.py (the runs kernels for a bfloat16 grad_y, FMAs,
#       # tensor cores and the plan) of new, base, new, base
#   bash tools/arch_round.sh step           # the small training step against the MLP (sm_90
#       # build): bench_overhead.py, tools/step_breakdown.py, bench_overhead.py again; the
#       # main job's step (lmKAN.demo --steps 600) in float32 and under autocast bfloat16
#   bash tools/arch_round.sh probe          # tools/probe_gather_mma.py (PROBE_ARGS) in the
#       # sm_90 build's tree
#   bash tools/arch_round.sh chunks         # tools/time_run_chunks.py (CHUNKS_ARGS) in the sm_90
#       # build's tree: the sorted backward's chunk sizes against its time
#   bash tools/arch_round.sh redprobe       # tools/probe_red_l2.cu (nvcc, no build needed):
#       # the L2's rate for coalesced float reductions beside loads of the same bytes
#   bash tools/arch_round.sh cnn            # examples/train_digits_cnn.py on the GPU (sm_90
#       # build): README's GPU row of the digits CNNs
#   bash tools/arch_round.sh forces         # the force step (sm_90 build): bench_forces.py with
#       # and without LayerNorm, tools/profile_forces.py of both layer kinds
#   bash tools/arch_round.sh pack           # $OUT's logs into one results.tgz (the device
#       # tool brings back 8 files only: end every call's stage list with pack); the
#       # summary stays beside it
#
# Builds use the system compiler (CXX=/usr/bin/g++): see README, "The C++ compiler".
# Logs and JSON go to $OUT (default benchmarks/results); a summary is printed last.
set -u
OUT=${OUT:-benchmarks/results}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 CXX=${CXX_FOR_LMKAN:-/usr/bin/g++} CUDAHOSTCXX=${CXX_FOR_LMKAN:-/usr/bin/g++}
PY=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
declare -A ARCH=([sm90]="9.0" [sm80]="8.0+PTX")

copy_tree() {  # fresh copy of the source tree (no build outputs)
  rm -rf "$1" && mkdir -p "$1"
  (cd "$SRC" && tar cf - --exclude=./build --exclude='*.so' --exclude=./benchmarks/results \
     --exclude=./.git .) | (cd "$1" && tar xf -)
}

timed_build() {  # timed_build DIR ARCH_LIST LOG
  local start=$(date +%s%N)
  (cd "$1" && TORCH_CUDA_ARCH_LIST="$2" CUDA_VISIBLE_DEVICES=${BUILD_VISIBLE_DEVICES-0} MAX_JOBS=${MAX_JOBS:-16} LMKAN_FORCE_CUDA=1 \
     $PY setup.py build_ext --inplace > "$3" 2>&1) || { tail -40 "$3"; return 1; }
  echo "build TORCH_CUDA_ARCH_LIST=$2 (${MAX_JOBS:-16} jobs): $(( ($(date +%s%N) - start) / 1000000 )) ms" \
    | tee -a "$OUT/summary.txt"
}

for stage in "$@"; do
  case "$stage" in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/summary.txt"
      for b in sm90 sm80; do  # both at once, half the jobs each
        copy_tree /tmp/lmkan-$b
        (MAX_JOBS=$(( ${MAX_JOBS:-16} / 2 )) timed_build /tmp/lmkan-$b "${ARCH[$b]}" "$OUT/build_$b.log" \
           || touch "$OUT/build_$b.failed") &
      done
      wait
      for b in sm90 sm80; do
        [ -e "$OUT/build_$b.failed" ] && { echo "build $b failed (build_$b.log)"; exit 1; }
        (cd /tmp/lmkan-$b && PYTHONPATH=$PWD $PY -c "import lmKAN; print(lmKAN.backend_info())" | head -2 | tail -1) \
          | tee -a "$OUT/summary.txt"
      done
      ;;
    buildall)
      copy_tree /tmp/lmkan-all
      # no GPU visible to the build, as on a build machine: setup.py's default list
      BUILD_VISIBLE_DEVICES="" timed_build /tmp/lmkan-all "" "$OUT/build_all.log" || exit 1
      $PY "$SRC/tools/list_elf.py" /tmp/lmkan-all/lmKAN/_C*.so | tee -a "$OUT/summary.txt"
      grep "TORCH_CUDA_ARCH_LIST defaults" "$OUT/build_all.log" | tee -a "$OUT/summary.txt"
      ;;
    test)
      shift_paths=${TEST_PATHS:-tests}
      # Side by side on a GPU of over 100 GB; one after the other below that: the int64-offset
      # tests of test_cuda_2d.py take 20-40 GB each, and two at once ran out of memory on an
      # 80 GB H100 (2026-12-06)
      gpu_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
      for b in sm90 sm80; do
        (cd /tmp/lmkan-$b && timeout ${TEST_TIMEOUT:-540} $PY -m pytest -q -p no:cacheprovider -rfEs --durations=15 \
           $shift_paths > "$OUT/tests_$b.log" 2>&1; echo "pytest $b rc=$?: $(tail -1 "$OUT/tests_$b.log")" \
           >> "$OUT/summary.txt") &
        [ "${gpu_mib:-0}" -gt 100000 ] || wait
      done
      wait
      for b in sm90 sm80; do grep -E "^(FAILED|ERROR)" "$OUT/tests_$b.log" | head -20; done
      ;;
    sanitize)
      for b in ${SANITIZE_BUILDS:-sm90 sm80}; do
        for topic in ${SANITIZE_TOPICS:-2d 1d reg}; do
          case $topic in 2d) part=${SANITIZE_2D_PART:-all} ;; 1d) part=${SANITIZE_1D_PART:-all} ;; *) part= ;; esac
          for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
            (cd /tmp/lmkan-$b && export PYTHONPATH=/tmp/lmkan-$b && timeout ${SANITIZE_TIMEOUT:-400} compute-sanitizer --tool $tool \
               $PY tools/sanitize_$topic.py $part > "$OUT/san_${b}_${topic}_$tool.log" 2>&1
             echo "sanitize $b $topic $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
               "$OUT/san_${b}_${topic}_$tool.log" | tail -1)" >> "$OUT/summary.txt") &
          done
        done
      done
      wait
      cat "$OUT"/san_*.log > "$OUT/sanitize.log" && rm -f "$OUT"/san_*.log
      ;;
    bench)
      for b in sm90 sm80; do
        for topic in ${BENCH_TOPICS:-2d 1d}; do
          (cd /tmp/lmkan-$b && export PYTHONPATH=/tmp/lmkan-$b && timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench_$topic.py \
             --json "$OUT/bench_${topic}_$b.json" $([ $topic = 2d ] && echo ${BENCH2D_ARGS:-}) \
             > "$OUT/bench_${topic}_$b.log" 2>&1)
          echo "bench_$topic $b rc=$?" >> "$OUT/summary.txt"
        done
      done
      for b in sm90 sm80; do for topic in ${BENCH_TOPICS:-2d 1d}; do
        echo "== bench_$topic $b"; grep -v "^{" "$OUT/bench_${topic}_$b.log" | tail -40
      done; done
      ;;
    compare)
      [ -f "${BASE_TAR:-}" ] || { echo "compare: set BASE_TAR to a git archive of the base revision"; exit 2; }
      rm -rf /tmp/lmkan-base && mkdir -p /tmp/lmkan-base && tar xf "$BASE_TAR" -C /tmp/lmkan-base
      copy_tree /tmp/lmkan-new
      for b in new base; do  # both at once, half the jobs each
        MAX_JOBS=$(( ${MAX_JOBS:-16} / 2 )) timed_build /tmp/lmkan-$b 9.0 "$OUT/build_$b.log" &
      done
      wait
      for b in new base new; do  # the host's speed drifts: the new build on both sides
        # (a base revision older than benchmarks/bench_overhead.py has none to run)
        [ -f /tmp/lmkan-$b/benchmarks/bench_overhead.py ] || continue
        (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout 120 $PY benchmarks/bench_overhead.py) \
          >> "$OUT/overhead_$b.log" 2>&1
      done
      for b in new base; do
        (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench_2d.py \
           --json "$OUT/bench_2d_$b.json" ${BENCH2D_ARGS:---cases G8,G26 --tiles 4,8 --blocks 512}) \
          > "$OUT/bench_2d_$b.log" 2>&1
        echo "bench_2d $b rc=$?" >> "$OUT/summary.txt"
      done
      if [ -n "${COMPARE_1D:-}" ]; then  # bench_1d at its default shape and a small batch
        for b in new base; do
          for shape in "" "--batch 1024 --features 128"; do
            (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench_1d.py \
               --json "$OUT/bench_1d_${b}${shape:+_small}.json" $shape) > "$OUT/bench_1d_${b}${shape:+_small}.log" 2>&1
            echo "bench_1d $b ${shape:-default} rc=$?" >> "$OUT/summary.txt"
          done
          for budget in ${COMPARE_1D_BUDGETS:-}; do  # e.g. "163 99": the default shape there
            (cd /tmp/lmkan-$b && PYTHONPATH=$PWD LMKAN_SMEM_BUDGET_KB=$budget timeout ${BENCH_TIMEOUT:-300} \
               $PY benchmarks/bench_1d.py --json "$OUT/bench_1d_${b}_${budget}kb.json") \
               > "$OUT/bench_1d_${b}_${budget}kb.log" 2>&1
            echo "bench_1d $b at ${budget} KB rc=$?" >> "$OUT/summary.txt"
          done
        done
      fi
      if [ -n "${COMPARE_BITWISE:-}" ]; then  # the 2D ops' outputs of both builds, bit for bit
        for b in new base; do
          (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout 300 $PY "$SRC/tools/bitwise_outputs.py" dump \
             /tmp/bitwise_$b.pt) > "$OUT/bitwise_$b.log" 2>&1
        done
        $PY "$SRC/tools/bitwise_outputs.py" compare /tmp/bitwise_new.pt /tmp/bitwise_base.pt \
          | tee -a "$OUT/summary.txt"
      fi
      if [ -n "${COMPARE_PROFILE:-}" ]; then  # per-kernel times of the 2D fwd+bwd, alternating
        for b in new base new base; do
          (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY tools/profile_2d.py \
             ${PROFILE_ARGS:---cases G8,G26 --tiles 16 --fast 0,1} | sed -n '/== summary/,$p' | tail -n +2 \
             | sed "s/^/$b /") >> "$OUT/profile_2d.log" 2>&1
        done
      fi
      if [ -n "${COMPARE_RUNS:-}" ]; then  # the sorted backward's runs kernels, alternating
        for b in new base new base; do  # this tree's script in both (it imports its own tree)
          cp "$SRC/tools/time_runs_plan.py" /tmp/lmkan-$b/tools/
          (cd /tmp/lmkan-$b && timeout ${BENCH_TIMEOUT:-300} $PY tools/time_runs_plan.py \
             | sed "s/^/$b /") >> "$OUT/runs_plan.log" 2>&1
        done
        cat "$OUT/runs_plan.log" >> "$OUT/summary.txt"
      fi
      if [ -n "${COMPARE_HESSIAN:-}" ]; then  # the regulariser kernels, both builds
        for b in new base; do
          (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench_hessian.py \
             --json "$OUT/bench_hessian_$b.json") > "$OUT/bench_hessian_$b.log" 2>&1
          echo "bench_hessian $b rc=$?" >> "$OUT/summary.txt"
        done
      fi
      if [ -n "${COMPARE_CONV:-}" ]; then  # the convolutions against nn.Conv2d, both builds
        for b in new base; do
          (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/bench_conv.py \
             --json "$OUT/bench_conv_$b.json") > "$OUT/bench_conv_$b.log" 2>&1
          echo "bench_conv $b rc=$?" >> "$OUT/summary.txt"
        done
      fi
      for b in new base new; do  # the force step, new build on both sides again
        (cd /tmp/lmkan-$b && PYTHONPATH=$PWD timeout 120 $PY benchmarks/bench_forces.py) \
          >> "$OUT/forces_$b.log" 2>&1
      done
      for b in new base; do
        echo "== $b"; grep -E "step|no grad" "$OUT/overhead_$b.log"
        grep -v "^{" "$OUT/bench_2d_$b.log" | grep -E "^G" | tail -40
        grep -E "force step" "$OUT/forces_$b.log"
        [ -n "${COMPARE_1D:-}" ] && grep -E "^lmKAN KANLayer  |^kernels" "$OUT"/bench_1d_${b}*.log
        [ -n "${COMPARE_PROFILE:-}" ] && grep "^$b " "$OUT/profile_2d.log"
        [ -n "${COMPARE_HESSIAN:-}" ] && grep -v "^{" "$OUT/bench_hessian_$b.log" | tail -12
        [ -n "${COMPARE_CONV:-}" ] && grep -v "^{" "$OUT/bench_conv_$b.log" | tail -16
      done
      ;;
    forces)
      for norm in layernorm none; do
        (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 120 $PY benchmarks/bench_forces.py --norm $norm) \
          > "$OUT/forces_$norm.log" 2>&1
        tail -n 4 "$OUT/forces_$norm.log" | tee -a "$OUT/summary.txt"
      done
      for kind in 1d 2d; do
        (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 120 $PY tools/profile_forces.py --kind $kind) \
          > "$OUT/profile_forces_$kind.log" 2>&1
        head -n 14 "$OUT/profile_forces_$kind.log" | cut -c1-200
      done
      ;;
    step)  # the small training step against the MLP (issue 16, item 6), sm_90 build:
      # tools/step_breakdown.py (the step by stage, then the Hessian term alone) and
      # bench_overhead.py twice around it; STEP_SAMPLES alternate pairs each (default 15)
      for run in 1 2 3; do
        if [ $run = 2 ]; then
          (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 240 $PY tools/step_breakdown.py \
             --samples ${STEP_SAMPLES:-15}) > "$OUT/step_breakdown.log" 2>&1
          echo "step_breakdown rc=$?" >> "$OUT/summary.txt"
        else
          (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 180 $PY benchmarks/bench_overhead.py \
             --samples ${STEP_SAMPLES:-15} --json "$OUT/overhead_$run.json") > "$OUT/overhead_$run.log" 2>&1
          grep -E "step" "$OUT/overhead_$run.log" | tee -a "$OUT/summary.txt"
        fi
      done
      tail -n 12 "$OUT/step_breakdown.log"
      for dtype in float32 bfloat16; do  # the main job's step, float32 and under autocast
        (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 120 $PY -m lmKAN.demo --steps 600 \
           $([ $dtype = bfloat16 ] && echo --autocast bfloat16) 2>/dev/null) > "$OUT/demo_$dtype.log"
        echo "demo $dtype: $(grep -E '^(lmKAN|MLP) +[0-9]' "$OUT/demo_$dtype.log" | tr -s ' ' | tr '\n' ';')" \
          | tee -a "$OUT/summary.txt"
      done
      ;;
    probe)  # tools/probe_gather_mma.py in the sm_90 build's tree (it compiles its own .cu)
      (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 400 $PY tools/probe_gather_mma.py \
         ${PROBE_ARGS:-}) > "$OUT/probe_gather_mma.log" 2>&1
      echo "probe_gather_mma rc=$?" >> "$OUT/summary.txt"
      tail -n 8 "$OUT/probe_gather_mma.log" | tee -a "$OUT/summary.txt"
      ;;
    chunks)  # tools/time_run_chunks.py in the sm_90 build's tree (a process per chunk size)
      (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout ${BENCH_TIMEOUT:-300} $PY tools/time_run_chunks.py \
         ${CHUNKS_ARGS:-}) > "$OUT/time_run_chunks.log" 2>&1
      echo "time_run_chunks rc=$?" >> "$OUT/summary.txt"
      tee -a "$OUT/summary.txt" < "$OUT/time_run_chunks.log"
      ;;
    redprobe)  # stand-alone: compiled here for the GPU's architecture, a few seconds
      cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
      nvcc_bin=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
      ($nvcc_bin -O3 -arch=sm_${cc:-90} "$SRC/tools/probe_red_l2.cu" -o /tmp/probe_red_l2 \
         && timeout 60 /tmp/probe_red_l2) > "$OUT/probe_red_l2.log" 2>&1
      echo "probe_red_l2 rc=$?" >> "$OUT/summary.txt"
      tail -n 7 "$OUT/probe_red_l2.log" | tee -a "$OUT/summary.txt"
      ;;
    cnn)  # the digits CNN example on the GPU (issue 20, item 4), sm_90 build
      (cd /tmp/lmkan-sm90 && PYTHONPATH=$PWD timeout 300 $PY examples/train_digits_cnn.py \
         --device cuda 2>/dev/null) > "$OUT/train_digits_cnn.log"
      echo "train_digits_cnn rc=$?" >> "$OUT/summary.txt"
      tail -n 4 "$OUT/train_digits_cnn.log" | tee -a "$OUT/summary.txt"
      ;;
    pack)
      bash "$(dirname "$0")/pack_results.sh" "$OUT"
      ;;
    check)  # test and sanitize side by side (one GPU, 16 cores: ~250 s for the 2D and 1D
      # files with SANITIZE_2D_PART=layer, run I of 2026-12-03, against ~400 s one after the other)
      ARCH_ROUND_NESTED=1 bash "$0" test > "$OUT/check_test.log" 2>&1 &
      ARCH_ROUND_NESTED=1 bash "$0" sanitize > "$OUT/check_sanitize.log" 2>&1 &
      wait
      ;;
    limits)
      (cd /tmp/lmkan-sm90 && PYTHONPATH=/tmp/lmkan-sm90 $PY tools/smem_limits.py) | tee -a "$OUT/summary.txt"
      ;;
    *) echo "unknown stage $stage (build, buildall, test, sanitize, check, bench, compare, step, probe, chunks, redprobe, cnn, forces, pack, limits)"; exit 2 ;;
  esac
done
[ -n "${ARCH_ROUND_NESTED:-}" ] || { echo "== summary"; cat "$OUT/summary.txt"; }
