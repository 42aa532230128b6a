#!/usr/bin/env bash
# llama-tq: build, check and (optionally) time the CUDA kernels of the ktq/vtq KV-cache types on a GPU
# machine (H100/H200, sm_90). Runs ON the device machine, from the root of a llama-tq checkout:
#
#   here:    python tools/upstream.py --tree <patched tree> pack --out .carry/cuda-src.tar.gz
#   device:  bash tools/gpu_check.sh            (the device tool: carry .carry, OUT is set)
#
# Steps: unpack the patched, trimmed tree into $TQ_BUILD/src (content-synced, so a warm $TQ_BUILD only
# rebuilds what changed), copy src/ (our sources) beside it, configure (sm_90, tests on, server off),
# build test-backend-ops (+ llama-bench, llama-quantize with TQ_BENCH=1), run test-backend-ops -b CUDA0
# for SET_ROWS, GET_ROWS, CPY, FLASH_ATTN_EXT (all cases: ours and upstream's), optionally
# compute-sanitizer memcheck on our cases (TQ_SANITIZE=1) and a llama-bench sweep on a random-weight
# llama (TQ_BENCH=1). Logs go to $OUT and, at exit, into $OUT/logs.tar.gz beside summary.txt, the speed records
# and the quality logs (at most 8 files come back from the device tool); a short table is printed last.
#
# Environment:
#   OUT            output folder (default ./gpu-check-out)
#   TQ_TAR         patched tree tarball (default .carry/cuda-src.tar.gz)
#   TQ_BUILD       build root, reused between runs (default /tmp/build)
#   TQ_ARCHS       CMAKE_CUDA_ARCHITECTURES (default 90)
#   TQ_FA_QUANTS   GGML_CUDA_FA_QUANTS (default: upstream's default set)
#   TQ_FA_PAIRS    LLAMA_TQ_CUDA_FA_PAIRS: K/V pairs with our decode kernel (default: its default set)
#   TQ_OPS         ops to test (default "SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT TQ_KV_SET_ROWS TQ_FA_ROT"; TQ_FA_ROT:
#                  attention and the output's Hadamard rotation, fused under LLAMA_TQ_CUDA_FUSE_ROT=1, see TQ_TEST_ENVS)
#   TQ_TEST_FILTER test-backend-ops -p pattern (e.g. "ktq|vtq": only the llama-tq cases; default: all cases)
#   TQ_TEST_ENVS   the test-backend-ops runs again under each of these environments, a word each: comma-separated
#                  assignments or - (none), e.g. "- LLAMA_TQ_CUDA_FA_MMA=1,LLAMA_TQ_CUDA_FA_STAGE=1" (default -)
#   TQ_SANITIZE=1  compute-sanitizer memcheck (and racecheck: SET_ROWS, CPY, FLASH_ATTN_EXT, TQ_KV_SET_ROWS) on the llama-tq cases
#                  of TQ_OPS, each run cut at TQ_SANITIZE_TIMEOUT seconds (default 300; rc 124 = cut)
#   TQ_BENCH=1     llama-bench -fa 1 -p 512 -n 64 over TQ_BENCH_DEPTHS for TQ_BENCH_PAIRS
#   TQ_BENCH_DEPTHS (default 0,8192)   TQ_BENCH_PAIRS (default "f16/f16 q8_0/q8_0 q4_0/q4_0 ktq2/vtq2 ktq4/vtq3")
#   TQ_BENCH_REPS  llama-bench -r (default 3)
#   TQ_BENCH_GRAPH_OPT "0", "1" or "0 1": runs with GGML_CUDA_GRAPH_OPT (upstream's opt-in: the Q, K and V branches
#                  of a layer, our two encoders included, on concurrent streams; label <shape>+graph-opt)
#   TQ_BENCH_FA_MMA "default", "1", "0", "stage", "nopair", "xh", "noxh" or a list: runs with LLAMA_TQ_CUDA_FA_MMA unset (the
#                  decode kernel's form by head size and GQA), 1 (its tensor-core form wherever it can run; label
#                  +fa-mma), 0 (its vector form; label +fa-vec), LLAMA_TQ_CUDA_FA_STAGE=1 (the tensor-core form's
#                  staging variant where that form runs; label +fa-stage) or LLAMA_TQ_CUDA_FA_VPAIR=0 (that form with
#                  vtq2 decoded one value per lookup instead of from its pair table; label +fa-nopair), "xh" or
#                  "noxh" (LLAMA_TQ_CUDA_FA_XH=1 / =0: the opt-in cross-head variant wherever it fits / never; labels
#                  +fa-xh, +fa-noxh)
#   TQ_BENCH_VIT_SPEC "default", "0", "1" or a list: runs with LLAMA_TQ_CUDA_VIT_SPEC unset (a decode step's two
#                  Viterbi passes of the V encoder side by side, the default), 0 (one after the other; label
#                  +no-vit-spec) or 1 (label +vit-spec)
#   TQ_BENCH_PDL   "default", "0" or "default 0": runs with LLAMA_TQ_CUDA_PDL unset or 0 (our decode-step kernels
#                  launched without programmatic dependent launch; label +no-pdl)
#   TQ_BENCH_FUSE_ROT "0", "1" or "0 1": runs with LLAMA_TQ_CUDA_FUSE_ROT (1: the decode kernel writes the attention
#                  output's Hadamard rotation itself; label +fuse-rot)
#   TQ_BENCH_DEQUANT8 "1", "0" or "1 0": runs with LLAMA_TQ_CUDA_DEQUANT8 (0: the one-value-per-thread f16
#                  converter of K/V for prefill instead of the eight-value one; label +dequant1)
#   TQ_BENCH_NO_KV_FUSION "0", "1" or "0 1": runs with LLAMA_TQ_CUDA_NO_KV_FUSION (a decode step's K and V writes as
#                  two launches instead of one; label <shape>+no-kv-fusion)
#   TQ_BENCH_SHAPES random-weight llamas to time (default "hd64"; hd64: 16L d2048 32 heads, 8 KV heads x 64;
#                  hd128: 16L d2048 16 heads, 8 KV heads x 128; hd128g4: 16 heads, 4 KV heads x 128, 4 query heads per KV
#                  head as Llama-3-8B or Mistral-7B); records of all shapes go to $OUT/kv_speed (benchmarks/kv_speed.py)
#   TQ_QUALITY=1   KLD vs f16 KV on CUDA (llama-perplexity, same settings as benchmarks/kv_quality.py): needs the
#                  SmolLM2 Q4_1 GGUF as TQ_MODEL (or its halves .carry*/smol.part-*, e.g. .carry0/ and .carry1/ on two calls) and .carry/eval.txt;
#                  logs packed into $OUT/quality.tar.gz (make the table here with kv_quality.py --from-logs)
#   TQ_QUALITY_PAIRS  default: the pairs of benchmarks/kv_quality.py
#   TQ_QUALITY_UB  llama-perplexity -ub (default 512: prefill path; 8: every step goes through the decode kernel)
#                  the model halves may travel on separate calls: each is kept in $TQ_BUILD/quality/parts
#   TQ_FINETUNE=1  llama-finetune of SmolLM2 on CUDA (tokens/s and peak VRAM)
#   TQ_PROFILE=1   Nsight Compute kernel times of a decode step (TQ_PROFILE_PAIRS, TQ_PROFILE_DEPTHS; TQ_PROFILE_SHAPE)
#   TQ_PROFILE_PREFILL=1 Nsight Compute: the KV-cache writes' share of the GPU time of a pp512 step (TQ_PROFILE_PAIRS)
#                  at depth TQ_PROFILE_PREFILL_DEPTH (default 0; deeper, a multiple of 2048: only the attention,
#                  conversion and cache-write kernels of the timed step are timed, the fill's skipped by a launch
#                  count taken from a run at depth 0; no share then, as the other kernels are not timed)
#   TQ_PROFILE_ALL=1 with TQ_PROFILE: at depth 0 every kernel of a decode step (upstream's Hadamard rotations, norms,
#                  matmuls...), -n 4, with the share of the attention and cache-write kernels
#   TQ_PROFILE_SHAPE random llama of the profiles (default hd64; see TQ_BENCH_SHAPES)
#   TQ_PROFILE_DETAIL=1  ncu sections (occupancy, stalls, throughput) of the decode kernel and the encoders
#                  (TQ_PROFILE_DETAIL_WHAT: "kernel-regex:depth ..." pairs, default
#                  "tq_k_fattn_vec:8192 tq_k_encode_trellis:0 tq_k_encode_codebook:0")
#   TQ_PROFILE_ENVS the TQ_PROFILE timings again under each of these environments, a word each as TQ_TEST_ENVS
#                  (e.g. "- LLAMA_TQ_CUDA_FA_STAGE=1"; default -)
#   TQ_PROFILE_SOURCE "kernel-regex:depth ..." (ktq2/vtq2 on TQ_PROFILE_SHAPE): Nsight Compute's source page, the
#                  stall samples and executed instructions of every SASS instruction of those kernels with its CUDA
#                  line (the build gets -lineinfo), to $OUT/ncu-source-<kernel>-<depth>.csv (tools/ncu_source.py sums it)
#   TQ_SKIP_TESTS=1  skip test-backend-ops (not built then)
set -u -o pipefail

ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
TQ_TAR=${TQ_TAR:-$ROOT/.carry/cuda-src.tar.gz}
TQ_BUILD=${TQ_BUILD:-/tmp/build}
TQ_ARCHS=${TQ_ARCHS:-90}
TQ_OPS=${TQ_OPS:-"SET_ROWS GET_ROWS CPY FLASH_ATTN_EXT TQ_KV_SET_ROWS TQ_FA_ROT"}
TQ_BENCH_DEPTHS=${TQ_BENCH_DEPTHS:-0,8192}
TQ_BENCH_PAIRS=${TQ_BENCH_PAIRS:-"f16/f16 q8_0/q8_0 q4_0/q4_0 ktq2/vtq2 ktq4/vtq3"}
TQ_BENCH_REPS=${TQ_BENCH_REPS:-3}
mkdir -p "$OUT" "$TQ_BUILD"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# the device tool brings back at most 8 files: at exit (a cut by timeout included) every file under $OUT but the
# summary, the speed records (kv_speed/speed.jsonl, speed.png) and archives goes into $OUT/logs.tar.gz
pack_out() {
    (
        cd "$OUT" || exit 0
        mapfile -t files < <(find . -type f ! -name summary.txt ! -name '*.tar.gz' ! -path ./kv_speed/speed.jsonl \
            ! -path ./kv_speed/speed.png | sed 's|^\./||' | sort)
        [ "${#files[@]}" -gt 0 ] || exit 0
        tar czf logs.tar.gz.part "${files[@]}" && mv logs.tar.gz.part logs.tar.gz && rm -f "${files[@]}"
    )
}
trap pack_out EXIT
trap 'exit 143' TERM INT
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"

# ---- sources: content-synced copies (unchanged files keep their mtimes, so ninja rebuilds little) ----
stamp "unpack $TQ_TAR"
rm -rf "$TQ_BUILD/unpack" && mkdir -p "$TQ_BUILD/unpack" && tar xzf "$TQ_TAR" -C "$TQ_BUILD/unpack" || { say "unpack failed"; exit 1; }
python3 - "$TQ_BUILD/unpack/llama.cpp" "$TQ_BUILD/src/llama.cpp" "$ROOT/src" "$TQ_BUILD/src/llama-tq-src" <<'EOF'
import filecmp, os, shutil, sys
def sync(src, dst):
    n = 0
    keep = set()
    for d, _, files in os.walk(src):
        for f in files:
            s = os.path.join(d, f)
            rel = os.path.relpath(s, src)
            t = os.path.join(dst, rel)
            keep.add(rel)
            if os.path.islink(s):
                continue
            if not os.path.exists(t) or not filecmp.cmp(s, t, shallow=False):
                os.makedirs(os.path.dirname(t), exist_ok=True)
                shutil.copyfile(s, t)
                shutil.copymode(s, t)
                n += 1
    for d, _, files in os.walk(dst):
        for f in files:
            t = os.path.join(d, f)
            if os.path.relpath(t, dst) not in keep:
                os.remove(t)
                n += 1
    print(f"sync {src} -> {dst}: {n} changed")
sync(sys.argv[1], sys.argv[2])
sync(sys.argv[3], sys.argv[4])
EOF
SRC=$TQ_BUILD/src/llama.cpp
BLD=$TQ_BUILD/build

# ---- configure + build ----
stamp "configure"
FA_ARG=()
[ -n "${TQ_FA_QUANTS:-}" ] && FA_ARG=(-DGGML_CUDA_FA_QUANTS="$TQ_FA_QUANTS")
[ -n "${TQ_FA_PAIRS:-}" ] && FA_ARG+=(-DLLAMA_TQ_CUDA_FA_PAIRS="$TQ_FA_PAIRS")
# the source page maps SASS to CUDA lines only with line info (no change to the code generated)
if [ -n "${TQ_PROFILE_SOURCE:-}" ]; then FA_ARG+=(-DCMAKE_CUDA_FLAGS=-lineinfo); else FA_ARG+=(-DCMAKE_CUDA_FLAGS=); fi
cmake -S "$SRC" -B "$BLD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$TQ_ARCHS" \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_NUMBER=11312 -DLLAMA_BUILD_COMMIT=0c1e570 \
    -DLLAMA_TQ_SRC_DIR="$TQ_BUILD/src/llama-tq-src" "${FA_ARG[@]}" > "$OUT/build.log" 2>&1 \
    || { tail -30 "$OUT/build.log"; say "configure FAILED"; exit 1; }
TARGETS=()
[ "${TQ_SKIP_TESTS:-0}" = 1 ] || TARGETS=(test-backend-ops)  # TQ_SKIP_TESTS=1: not built (a shorter cold build)
[ "${TQ_BENCH:-0}" = 1 ] || [ "${TQ_PROFILE:-0}" = 1 ] || [ "${TQ_PROFILE_PREFILL:-0}" = 1 ] || [ -n "${TQ_PROFILE_SOURCE:-}" ] \
    && TARGETS+=(llama-bench llama-quantize)
[ "${TQ_QUALITY:-0}" = 1 ] && TARGETS+=(llama-perplexity llama-quantize)
[ "${TQ_FINETUNE:-0}" = 1 ] && TARGETS+=(llama-finetune llama-quantize)
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(test-backend-ops)
stamp "build ${TARGETS[*]}"
tb=$(date +%s)
if ! cmake --build "$BLD" --target "${TARGETS[@]}" -j "$(nproc)" >> "$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -40
    say "build FAILED"
    exit 1
fi
say "build: $(( $(date +%s) - tb )) s"
TBO=$BLD/bin/test-backend-ops

# ---- test-backend-ops ----
: > "$OUT/tests.log"
say ""
[ "${TQ_SKIP_TESTS:-0}" = 1 ] && TQ_OPS=""
[ -n "$TQ_OPS" ] && say "test-backend-ops -b CUDA0 (all cases of the op / llama-tq cases):"
for tenv in ${TQ_TEST_ENVS:--}; do
  tenv_args=()
  [ "$tenv" != - ] && IFS=, read -r -a tenv_args <<< "$tenv" && say "  with $tenv:"
  for op in $TQ_OPS; do
    stamp "test $op $tenv"
    log=$OUT/test-$op.tmp
    env "${tenv_args[@]}" "$TBO" test -b CUDA0 -o "$op" ${TQ_TEST_FILTER:+-p "$TQ_TEST_FILTER"} 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' > "$log"
    rc=$?
    cat "$log" >> "$OUT/tests.log"
    # case lines: "  OP(params): OK" / ": FAIL" / ": not supported [CUDA0]"
    cases=$(grep -E "^  $op\(" "$log")
    tqc=$(echo "$cases" | grep -E "ktq|vtq")
    ok=$(echo "$cases" | grep -c ": OK$")
    fail=$(echo "$cases" | grep -c ": FAIL")
    nsup=$(echo "$cases" | grep -c "not supported")
    tok=$(echo "$tqc" | grep -c ": OK$")
    tfail=$(echo "$tqc" | grep -c ": FAIL")
    tnsup=$(echo "$tqc" | grep -c "not supported")
    say "$(printf '  %-15s all: %4d ok %3d fail %4d unsupported | tq: %4d ok %3d fail %3d unsupported | rc %d' "$op" "$ok" "$fail" "$nsup" "$tok" "$tfail" "$tnsup" "$rc")"
    grep -E ": FAIL" "$log" | head -20 | sed 's/^/    /' | tee -a "$SUMMARY"
    rm -f "$log"
  done
done

# ---- compute-sanitizer ----
if [ "${TQ_SANITIZE:-0}" = 1 ]; then
    say ""
    CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -z "$CS" ]; then
        say "compute-sanitizer: not found"
    else
        : > "$OUT/sanitize.log"
        # memcheck with CUDA graphs off: where consecutive cases change a graph's topology, ggml-cuda's
        # cudaGraphExecUpdate fails by design and it re-instantiates the graph (ggml-cuda.cu), an API error that
        # memcheck counts (TQ_KV_SET_ROWS: 2 of them, and 0 errors with graphs off); racecheck keeps graphs on
        for op in $TQ_OPS; do
            stamp "memcheck $op"
            GGML_CUDA_DISABLE_GRAPHS=1 timeout "${TQ_SANITIZE_TIMEOUT:-300}" "$CS" --tool memcheck --error-exitcode 9 "$TBO" test -b CUDA0 -o "$op" -p "ktq|vtq" >> "$OUT/sanitize.log" 2>&1
            say "  memcheck $op (llama-tq cases): rc $? $(grep -E 'ERROR SUMMARY' "$OUT/sanitize.log" | tail -1)"
        done
        # the encoders share memory within a warp (trellis Viterbi) and the decode kernel stages tiles in
        # shared memory: racecheck the ops that run them (TQ_KV_SET_ROWS: the fused K + V kernel and, at its
        # prefill size, the one-warp trellis form)
        for op in SET_ROWS CPY FLASH_ATTN_EXT TQ_KV_SET_ROWS TQ_FA_ROT; do
            case " $TQ_OPS " in *" $op "*) ;; *) continue ;; esac
            stamp "racecheck $op"
            timeout "${TQ_SANITIZE_TIMEOUT:-300}" "$CS" --tool racecheck --error-exitcode 9 "$TBO" test -b CUDA0 -o "$op" -p "ktq|vtq" >> "$OUT/sanitize.log" 2>&1
            say "  racecheck $op (llama-tq cases): rc $? $(grep -E 'RACECHECK SUMMARY' "$OUT/sanitize.log" | tail -1)"
        done
    fi
fi

# ---- random-weight llamas (speed does not depend on weight values) ----
M=$TQ_BUILD/models
make_model() {  # shape -> $M/rand-<shape>-q4_k_m.gguf
    local shape=$1 dims
    mkdir -p "$M"
    case $shape in
        hd64)  dims=(--heads 32 --kv-heads 8 --head-dim 64) ;;
        hd128) dims=(--heads 16 --kv-heads 8 --head-dim 128) ;;
        hd128g4) dims=(--heads 16 --kv-heads 4 --head-dim 128) ;;
        *) say "unknown shape $shape"; return 1 ;;
    esac
    [ -f "$M/rand-$shape-q4_k_m.gguf" ] && return 0
    stamp "generate random llama $shape"
    PYTHONPATH=$SRC/gguf-py python3 "$ROOT/benchmarks/rand_llama.py" --vocab "$SRC/models/ggml-vocab-llama-spm.gguf" \
        --out "$M/rand-$shape-f16.gguf" --layers 16 --embd 2048 "${dims[@]}" --ff 5632 >> "$OUT/quantize.log" 2>&1 \
        || { tail -5 "$OUT/quantize.log"; say "model generation failed"; exit 1; }
    "$BLD/bin/llama-quantize" "$M/rand-$shape-f16.gguf" "$M/rand-$shape-q4_k_m.gguf" Q4_K_M >> "$OUT/quantize.log" 2>&1 \
        || { tail -5 "$OUT/quantize.log"; say "quantize failed"; exit 1; }
    rm -f "$M/rand-$shape-f16.gguf"
}

# ---- llama-bench on random-weight llamas ----
if [ "${TQ_BENCH:-0}" = 1 ]; then
    say ""
    for shape in ${TQ_BENCH_SHAPES:-hd64}; do
        make_model "$shape" || continue
        for gopt in ${TQ_BENCH_GRAPH_OPT:-0}; do
            for nofuse in ${TQ_BENCH_NO_KV_FUSION:-0}; do
              for famma in ${TQ_BENCH_FA_MMA:-default}; do
               for dq8 in ${TQ_BENCH_DEQUANT8:-1}; do
                for vspec in ${TQ_BENCH_VIT_SPEC:-default}; do
                 for pdl in ${TQ_BENCH_PDL:-default}; do
                  for frot in ${TQ_BENCH_FUSE_ROT:-0}; do
                label=$shape
                [ "$gopt" = 1 ] && label=$label+graph-opt
                [ "$nofuse" = 1 ] && label=$label+no-kv-fusion
                [ "$famma" = 0 ] && label=$label+fa-vec
                [ "$famma" = 1 ] && label=$label+fa-mma
                [ "$famma" = stage ] && label=$label+fa-stage
                [ "$famma" = nopair ] && label=$label+fa-nopair
                [ "$famma" = xh ] && label=$label+fa-xh
                [ "$famma" = noxh ] && label=$label+fa-noxh
                [ "$dq8" = 0 ] && label=$label+dequant1
                [ "$vspec" = 0 ] && label=$label+no-vit-spec
                [ "$vspec" = 1 ] && label=$label+vit-spec
                [ "$pdl" = 0 ] && label=$label+no-pdl
                [ "$frot" = 1 ] && label=$label+fuse-rot
                stamp "bench $label"
                famma_env=()
                case $famma in
                    0 | 1) famma_env=(LLAMA_TQ_CUDA_FA_MMA=$famma) ;;
                    stage) famma_env=(LLAMA_TQ_CUDA_FA_STAGE=1) ;;
                    nopair) famma_env=(LLAMA_TQ_CUDA_FA_VPAIR=0) ;;
                    xh) famma_env=(LLAMA_TQ_CUDA_FA_XH=1) ;;
                    noxh) famma_env=(LLAMA_TQ_CUDA_FA_XH=0) ;;
                esac
                [ "$vspec" != default ] && famma_env+=(LLAMA_TQ_CUDA_VIT_SPEC=$vspec)
                [ "$pdl" != default ] && famma_env+=(LLAMA_TQ_CUDA_PDL=$pdl)
                env "${famma_env[@]}" GGML_CUDA_GRAPH_OPT=$gopt LLAMA_TQ_CUDA_NO_KV_FUSION=$nofuse \
                    LLAMA_TQ_CUDA_DEQUANT8=$dq8 LLAMA_TQ_CUDA_FUSE_ROT=$frot python3 "$ROOT/benchmarks/kv_speed.py" \
                    --bench "$BLD/bin/llama-bench" --model "$M/rand-$shape-q4_k_m.gguf" --label "$label" \
                    --pairs "$(echo $TQ_BENCH_PAIRS | tr ' ' ',')" --depths "$TQ_BENCH_DEPTHS" --reps "$TQ_BENCH_REPS" \
                    --out "$OUT/kv_speed" >> "$OUT/bench.log" 2>&1
                say "llama-bench $label rc $?"
                  done
                 done
                done
               done
              done
            done
        done
    done
    # one folder for every shape (the label tells them apart): the device tool returns at most 8 files
    grep -E "^\|" "$OUT/kv_speed/speed.md" 2>/dev/null | tee -a "$SUMMARY"
fi

# Nsight Compute and the random llama of the profiles (TQ_PROFILE_SHAPE): sets NCU and MOD, or says what is missing
ncu_setup() {
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    make_model "${TQ_PROFILE_SHAPE:-hd64}"
    MOD=$M/rand-${TQ_PROFILE_SHAPE:-hd64}-q4_k_m.gguf
    if [ -z "$NCU" ] || [ ! -f "$MOD" ]; then
        say "profile: ncu or $MOD missing"
        return 1
    fi
}

# ---- per-kernel decode times (Nsight Compute) ----
# TQ_PROFILE=1: ncu times every decode-step kernel of interest (our encoders and decode kernel, upstream's
# SET_ROWS and vec FA) for TQ_PROFILE_PAIRS at TQ_PROFILE_DEPTHS on the TQ_PROFILE_SHAPE random llama (made on first use);
# the table lists the mean microseconds per launch and per token (tools/ncu_share.py). Encoders are left out at
# depth > 0 (the depth prefill would launch them thousands of times).
if [ "${TQ_PROFILE:-0}" = 1 ]; then
    say ""
    if ncu_setup; then
        CUOBJ=$(command -v cuobjdump)
        [ -n "$CUOBJ" ] && "$CUOBJ" -res-usage "$BLD"/bin/libggml-cuda.so 2>/dev/null | grep -A1 -E "tq_k_fattn|tq_k_encode" \
            | grep -E "Function|REG" | paste - - | sed -E 's/.*Function ([^ :]+).*REG:([0-9]+).*STACK:([0-9]+).*SHARED:([0-9]+).*/  res \1 REG \2 STACK \3 SHARED \4/' \
            | head -12 | tee -a "$SUMMARY"
        for penv in ${TQ_PROFILE_ENVS:--}; do
          penv_args=()
          [ "$penv" != - ] && IFS=, read -r -a penv_args <<< "$penv" && say "  with $penv:"
          for depth in ${TQ_PROFILE_DEPTHS:-0 32768}; do
            for pair in ${TQ_PROFILE_PAIRS:-f16/f16 ktq2/vtq2}; do
                ctk=${pair%/*}; ctv=${pair#*/}
                re='tq_k_fattn|flash_attn_ext_vec'
                [ "$depth" = 0 ] && re='tq_k_fattn|tq_k_encode|flash_attn_ext_vec|set_rows|cpy'
                ntok=16; part=()
                if [ "${TQ_PROFILE_ALL:-0}" = 1 ] && [ "$depth" = 0 ]; then
                    re='.'; ntok=4; part=(--part 'tq_k_|flash_attn|set_rows|fwht')
                fi
                tag=$ctk-$ctv-$depth
                [ "$penv" != - ] && tag=$tag-$(echo "$penv" | tr -c 'A-Za-z0-9_.\n-' '_')
                csv=$OUT/ncu-$tag.csv
                stamp "ncu $pair depth $depth $penv"
                env "${penv_args[@]}" timeout 240 "$NCU" --clock-control none --cache-control none --csv \
                    --metrics gpu__time_duration.sum --kernel-name "regex:$re" "$BLD/bin/llama-bench" -m "$MOD" -ngl 99 \
                    -fa 1 -ctk "$ctk" -ctv "$ctv" -p 0 -n "$ntok" -r 1 -d "$depth" > "$csv" 2> "$OUT/ncu.err" \
                    || say "  ncu $pair $depth rc $?"
                # llama-bench -n N plus one warm-up token: N + 1 decode steps
                python3 "$ROOT/tools/ncu_share.py" "$csv" --label "$pair depth $depth" --steps $(( ntok + 1 )) "${part[@]}" \
                    | tee -a "$SUMMARY"
            done
          done
        done
        # TQ_PROFILE_DETAIL=1: where the time of our kernels goes (occupancy, stall reasons, memory throughput):
        # ncu sections for a few launches of each TQ_PROFILE_DETAIL_WHAT kernel (ktq2/vtq2 at its depth); the full
        # reports go to $OUT/ncu-detail-*.txt
        if [ "${TQ_PROFILE_DETAIL:-0}" = 1 ]; then
            STALLS=$(for r in long_scoreboard short_scoreboard barrier mio_throttle wait math_pipe_throttle lg_throttle \
                not_selected no_instruction dispatch_stall branch_resolving membar tex_throttle drain imc_miss; do
                printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' "$r"; done | sed 's/,$//')
            for what in ${TQ_PROFILE_DETAIL_WHAT:-tq_k_fattn_vec:8192 tq_k_encode_trellis:0 tq_k_encode_codebook:0}; do
                kn=${what%:*}; depth=${what#*:}
                rep=$OUT/ncu-detail-$kn-$depth.txt
                stamp "ncu detail $kn depth $depth"
                timeout 180 "$NCU" --clock-control none --kernel-name "regex:$kn" --launch-skip 20 --launch-count 4 \
                    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                    --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SchedulerStats \
                    --section InstructionStats --section ComputeWorkloadAnalysis --metrics "$STALLS" \
                    "$BLD/bin/llama-bench" -m "$MOD" -ngl 99 -fa 1 -ctk ktq2 -ctv vtq2 -p 0 -n 8 -r 1 -d "$depth" \
                    > "$rep" 2>&1 || say "  ncu detail $kn rc $?"
                grep -E "^  [a-z_]+.*\(|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Block Limit|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Active Warps Per|Eligible Warps|Stall|stalled|L1/TEX Hit|Grid Size|Waves Per" "$rep" \
                    | head -60 | sed 's/^/  /' | tee -a "$SUMMARY"
            done
        fi
    fi
fi

# ---- source-level profile (Nsight Compute's source page) ----
# TQ_PROFILE_SOURCE: per SASS instruction of a kernel (ktq2/vtq2 at a depth), its CUDA file and line, warp stall
# samples by reason and instructions executed: where a latency chain or a pipe spends its time. Two launches after
# 20 skipped; the report's source page as CSV (tools/ncu_source.py sums it by line here).
if [ -n "${TQ_PROFILE_SOURCE:-}" ]; then
    say ""
    if ncu_setup; then
        for what in $TQ_PROFILE_SOURCE; do
            kn=${what%:*}; depth=${what#*:}
            rep=$TQ_BUILD/ncu-source-$kn-$depth
            stamp "ncu source $kn depth $depth"
            rm -f "$rep.ncu-rep"
            timeout 240 "$NCU" --clock-control none --kernel-name "regex:$kn" --launch-skip 20 --launch-count 2 \
                --section SourceCounters --section WarpStateStats --section LaunchStats --import-source yes -o "$rep" \
                "$BLD/bin/llama-bench" -m "$MOD" -ngl 99 -fa 1 -ctk ktq2 -ctv vtq2 -p 0 -n 8 -r 1 -d "$depth" \
                > "$OUT/ncu-source-$kn-$depth.log" 2>&1 || say "  ncu source $kn rc $?"
            "$NCU" --import "$rep.ncu-rep" --page source --csv --print-source cuda,sass \
                > "$OUT/ncu-source-$kn-$depth.csv" 2>> "$OUT/ncu-source-$kn-$depth.log" \
                || "$NCU" --import "$rep.ncu-rep" --page source --csv --print-source sass \
                > "$OUT/ncu-source-$kn-$depth.csv" 2>> "$OUT/ncu-source-$kn-$depth.log" || say "  ncu source page rc $?"
            say "  $kn depth $depth: $(wc -l < "$OUT/ncu-source-$kn-$depth.csv") source rows"
        done
    fi
fi

# ---- share of the encoders in a prefill step (Nsight Compute) ----
# TQ_PROFILE_PREFILL=1: every kernel of a llama-bench pp512 run at depth 0 (its warm-up run included) on the
# random llama (TQ_PROFILE_SHAPE), for TQ_PROFILE_PAIRS; prints the GPU time of the KV-cache writes (our encoders;
# upstream's set_rows for other types) as a share of all kernel time (issue 5: encoding <= 5 % of a prefill step).
# At TQ_PROFILE_PREFILL_DEPTH > 0 the run first fills the cache (hundreds of ubatches; timing each of their launches
# took longer than a device call), so only the kernels that differ between cache types (attention, our f16
# conversion, cache writes) of the timed step are timed: a run at depth 0 counts their launches in one ubatch, and
# ncu skips depth / 512 times that many before it times as many; no warm-up run (it would add a ubatch). No share
# of the step's time then (its other kernels are not timed)
if [ "${TQ_PROFILE_PREFILL:-0}" = 1 ] && say "" && ncu_setup; then
    pdepth=${TQ_PROFILE_PREFILL_DEPTH:-0}
    for pair in ${TQ_PROFILE_PAIRS:-f16/f16 ktq2/vtq2}; do
        ctk=${pair%/*}; ctv=${pair#*/}
        csv=$OUT/ncu-prefill-$ctk-$ctv-$pdepth.csv
        stamp "ncu prefill $pair depth $pdepth"
        sel=(); view=(--part 'tq_k_encode|set_rows'); nowarm=()
        if [ "$pdepth" != 0 ]; then
            # the fill is pdepth / 512 ubatches, each launching what the timed one does: count the matching
            # launches of one ubatch (a run at depth 0), then let ncu skip those of the fill unprofiled
            sel=(--kernel-name "regex:^(tq_k_|flash_attn_ext|k_set_rows)")
            nowarm=(--no-warmup)
            timeout 200 "$NCU" --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum \
                "${sel[@]}" "$BLD/bin/llama-bench" -m "$MOD" -ngl 99 -fa 1 -ctk "$ctk" -ctv "$ctv" -p 512 -n 0 -r 1 \
                -d 0 --no-warmup > "$csv.ub" 2> "$OUT/ncu.err" || say "  ncu prefill $pair (one ubatch) rc $?"
            per=$(python3 "$ROOT/tools/ncu_share.py" "$csv.ub" --count) || per=0
            [ "$per" -gt 0 ] || { say "  ncu prefill $pair: no launches counted in one ubatch"; continue; }
            sel+=(--launch-skip "$(( pdepth / 512 * per ))" --launch-count "$per")
            view=()
        fi
        timeout 500 "$NCU" --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum "${sel[@]}" \
            "$BLD/bin/llama-bench" -m "$MOD" -ngl 99 -fa 1 -ctk "$ctk" -ctv "$ctv" -p 512 -n 0 -r 1 -d "$pdepth" \
            "${nowarm[@]}" > "$csv" 2> "$OUT/ncu.err" || say "  ncu prefill $pair rc $?"
        python3 "$ROOT/tools/ncu_share.py" "$csv" --label "prefill pp512 $pair depth $pdepth" "${view[@]}" \
            | tee -a "$SUMMARY"
    done
fi

# ---- KLD vs f16 KV on CUDA (same settings as benchmarks/kv_quality.py) ----
if [ "${TQ_QUALITY:-0}" = 1 ]; then
    say ""
    Q=$TQ_BUILD/quality
    mkdir -p "$Q/logs"
    TQ_MODEL=${TQ_MODEL:-$Q/smol.q4_1.gguf}
    # the two halves may come on two calls (64 MiB per call): keep each one, join them once both are here
    mkdir -p "$Q/parts"
    for part in "$ROOT"/.carry*/smol.part-*; do [ -f "$part" ] && cp -n "$part" "$Q/parts/"; done
    if [ ! -f "$TQ_MODEL" ] && [ -f "$Q/parts/smol.part-00" ] && [ -f "$Q/parts/smol.part-01" ]; then
        cat "$Q"/parts/smol.part-* > "$TQ_MODEL"
    fi
fi
if [ "${TQ_QUALITY:-0}" = 1 ] && [ ! -f "$TQ_MODEL" ]; then
    say "quality: model halves kept so far: $(ls "$Q/parts" | tr '\n' ' ')- skipped until both are here"
elif [ "${TQ_QUALITY:-0}" = 1 ]; then
    [ -f "$Q/smol.f16.gguf" ] || "$BLD/bin/llama-quantize" --allow-requantize "$TQ_MODEL" "$Q/smol.f16.gguf" F16 > "$Q/quantize.log" 2>&1 \
        || { tail -5 "$Q/quantize.log"; say "quality: no model (quantize failed)"; exit 1; }
    PPL=("$BLD/bin/llama-perplexity" -m "$Q/smol.f16.gguf" -f "$ROOT/.carry/eval.txt" -c 512 -b 512 -ub "${TQ_QUALITY_UB:-512}"
         --chunks 20 -fa on -ngl 99)
    stamp "quality base"
    "${PPL[@]}" -ctk f16 -ctv f16 --kl-divergence-base "$Q/base.kld" > "$Q/logs/base-f16.log" 2>&1 || say "base failed"
    QP=${TQ_QUALITY_PAIRS:-$(python3 -c "import ast,sys; t=open('$ROOT/benchmarks/kv_quality.py').read(); \
print(' '.join(ast.literal_eval(t.split('UPSTREAM_PAIRS = ')[1].split(chr(10))[0]) + [p for l in t.split('OUR_PAIRS = [')[1].split(']')[0].splitlines() for p in ast.literal_eval('[' + l.split('#')[0] + ']')]))")}
    for pair in $QP; do
        ctk=${pair%/*}; ctv=${pair#*/}
        "${PPL[@]}" -ctk "$ctk" -ctv "$ctv" --kl-divergence-base "$Q/base.kld" --kl-divergence > "$Q/logs/$ctk-$ctv.log" 2>&1
        say "$(printf '  %-14s rc %d %s' "$pair" $? "$(grep -E 'Mean +KLD' "$Q/logs/$ctk-$ctv.log" | tail -1)")"
    done
    say "  (micro-batch ${TQ_QUALITY_UB:-512}: at 8 or fewer tokens the llama-tq pairs run the decode kernel)"
    tar czf "$OUT/quality.tar.gz" -C "$Q" logs
fi

# ---- llama-finetune on CUDA ----
if [ "${TQ_FINETUNE:-0}" = 1 ]; then
    say ""
    F=$TQ_BUILD/finetune
    mkdir -p "$F"
    TQ_MODEL=${TQ_MODEL:-$TQ_BUILD/quality/smol.q4_1.gguf}
    [ -f "$F/smol.f32.gguf" ] || "$BLD/bin/llama-quantize" --allow-requantize "$TQ_MODEL" "$F/smol.f32.gguf" F32 > "$F/quantize.log" 2>&1 \
        || { tail -5 "$F/quantize.log"; say "finetune: quantize failed"; exit 1; }
    head -c 300000 "$ROOT/.carry/train.txt" > "$F/train.txt"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$F/vram.log" &
    smi=$!
    stamp "finetune"
    tf=$(date +%s)
    "$BLD/bin/llama-finetune" -m "$F/smol.f32.gguf" -f "$F/train.txt" -o "$F/tuned.gguf" -c 512 -b 512 -ub 512 \
        -ngl 99 --epochs 1 -lr 1e-5 --train-skip-regex 'token_embd|output' > "$OUT/finetune.log" 2>&1
    rc=$?
    kill $smi
    say "finetune rc $rc, $(( $(date +%s) - tf )) s, peak VRAM $(sort -n "$F/vram.log" | tail -1) MiB"
    grep -E "train-skip-regex|trainable|tokens|t/s|loss" "$OUT/finetune.log" | tail -8 | tee -a "$SUMMARY"
fi

stamp "done"
echo
cat "$SUMMARY"
