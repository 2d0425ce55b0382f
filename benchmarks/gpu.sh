#!/usr/bin/env bash
# The GPU targets of benchmarks/extract.py, train.py and sweep.py on ViT-B and ViT-g
# (random init: speed and memory only), on a lent GPU machine, in one go within 8 minutes.
#
#   bash benchmarks/gpu.sh --prepare            # HERE (registry access): wheels -> .wheels/
#   bash benchmarks/gpu.sh --prepare --dry-run  # what it would download, nothing written
#   bash benchmarks/gpu.sh                      # THERE: the device tool, carry [".wheels"]
#   bash benchmarks/gpu.sh --dry-run            # CPU: same steps, demo backbone, few images
#
# The machine's image already holds torch, timm, numpy and most of what we need
# (benchmarks/gpu_image.txt); the rest (zarr, dask, ... ~15 MB) travels as wheels pinned to
# the versions installed here, installed there into a scratch folder on PYTHONPATH, the
# repository itself first on PYTHONPATH (nothing is installed into the image).
# Each step has its own timeout and all of them share one deadline (--budget, 460 s by
# default): a step that would pass it gets the time left, later steps are skipped and say so.
# Results JSON land in benchmarks/results/ (or $LOSA_BENCH_RESULTS) with a gpu-*.json
# summary of every step (rc, seconds, timed out, the files it wrote); with $OUT set
# (device tool) the summary and a tarball of the results and logs are copied there.
#
# Options: --models "vit_b vit_g" (default; dry run: demo), --budget SECONDS (default 460;
# dry run 900), --keep (keep the scratch folder with the step logs).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
WHEELS=$REPO/.wheels
PREPARE=0 DRY=0 KEEP=0 BUDGET="" MODELS=""
while (($#)); do
    case $1 in
        --prepare) PREPARE=1 ;;
        --dry-run) DRY=1 ;;
        --keep) KEEP=1 ;;
        --budget) BUDGET=$2; shift ;;
        --models) MODELS=$2; shift ;;
        -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown option $1; see --help" >&2; exit 2 ;;
    esac
    shift
done

if [[ -z ${PYTHON:-} ]]; then
    if ((PREPARE || DRY)) && [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

# ------------------------------------------------------------------ prepare (here)
PLATFORMS=(manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64
    manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
    manylinux2014_x86_64 manylinux1_x86_64)

prepare() {
    local carry
    carry=$("$PYTHON" benchmarks/_gpu.py carry) || exit 2
    local cmd=("$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12
        --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$WHEELS" -r "$WHEELS/carry.txt")
    echo "wheels for the GPU machine (CPython 3.12, x86-64), pinned to this environment:"
    echo "$carry" | sed 's/^/  /'
    if ((DRY)); then
        echo "dry run: would write $WHEELS/carry.txt and run:"
        echo "  ${cmd[*]}"
        return 0
    fi
    mkdir -p "$WHEELS"
    echo "$carry" >"$WHEELS/carry.txt"
    "${cmd[@]}" || { echo "gpu.sh: pip download failed; a wheel may need another --platform tag (see the device README)" >&2; exit 1; }
    local stale
    stale=$("$PYTHON" benchmarks/_gpu.py stale "$WHEELS")
    [[ -n $stale ]] && echo "not in carry.txt (left alone; delete them to carry less):" && echo "$stale" | sed 's/^/  /'
    echo "prepared $(du -sh "$WHEELS" | cut -f1) in $WHEELS; run gpu.sh there with carry [\".wheels\"]"
}

if ((PREPARE)); then
    prepare
    exit 0
fi

# ------------------------------------------------------------------ settings
# GPU: sized for an H100/H200 within the 460 s budget. Dry run: tiny, for the CPU test.
if ((DRY)); then
    MODELS=${MODELS:-demo}
    RANDOM_INIT=() STEP_S=${GPU_SH_STEP_S:-240} INSTALL_S=0 BUDGET=${BUDGET:-900}
    extract_args() { echo --images 32 --batch-size 16 --workers 0 --layers all; }
    store_args() { echo --limit 24 --batch-size 16 --workers 0; }
    train_args() {
        echo --modes stream,live --batch-size 1 --warmup 1 --batches 2 --workers 1 --rank 4 \
            --io-min-mb 0 --io-seconds 0.1
    }
    sweep_args() { echo --modes memory --repeats 1 --epochs 0.5 --threads 1 --device cpu --batch-size 16; }
else
    MODELS=${MODELS:-vit_b vit_g}
    RANDOM_INIT=(--random-init) STEP_S=0 INSTALL_S=60 BUDGET=${BUDGET:-460}
    extract_args() {
        case $1 in
            vit_g) echo --images 1024 --batch-size 128 --workers 8 --layers evenly:4 ;;
            *) echo --images 2048 --batch-size 128 --workers 8 --layers all ;;
        esac
    }
    store_args() {
        case $1 in
            vit_g) echo --limit 384 --batch-size 128 --workers 8 ;;
            *) echo --limit 512 --batch-size 128 --workers 8 ;;
        esac
    }
    # ViT-g: no ram-cache mode and a disk-only sweep, to stay inside the budget
    train_args() {
        local modes=stream,ram,gpu,live
        [[ $1 == vit_g ]] && modes=stream,gpu,live
        echo --modes $modes --batch-size 64 --warmup 5 --batches 20 --workers 8 --rank 16 \
            --io-min-mb 1000 --io-seconds 1
    }
    sweep_args() {
        local modes=disk,memory
        [[ $1 == vit_g ]] && modes=disk
        echo --modes $modes --repeats 1 --epochs 1 --threads 8 --device cuda --batch-size 128
    }
fi
# per-step timeouts in seconds (GPU); the dry run gives every step STEP_S
limit_of() {
    ((STEP_S)) && { echo "$STEP_S"; return; }
    case $1 in
        extract-vit_g) echo 90 ;; store-vit_g) echo 60 ;; train-vit_g) echo 120 ;; sweep-vit_g) echo 80 ;;
        extract-*) echo 60 ;; store-*) echo 40 ;; train-*) echo 90 ;; sweep-*) echo 60 ;;
    esac
}

START=$(date +%s)
DEADLINE=$((START + BUDGET))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/losa-gpu.XXXXXX")
mkdir -p "$WORK/logs"
RESULTS=${LOSA_BENCH_RESULTS:-$REPO/benchmarks/results}
mkdir -p "$RESULTS"
export LOSA_BENCH_RESULTS=$RESULTS PYTHONUNBUFFERED=1
STAMP=$(date -u +%Y%m%d-%H%M%S)
: >"$WORK/steps.tsv"
cleanup() { ((KEEP)) || rm -rf "$WORK"; }
trap cleanup EXIT

# step NAME LIMIT CMD...: run under the smaller of LIMIT and the time left; record it.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        printf '%s\tskipped\t0\t0\t\t%s\n' "$name" "$*" >>"$WORK/steps.tsv"
        return 1
    fi
    ((limit > left)) && limit=$left
    local before t0 rc took new
    before=$(ls "$RESULTS")
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    took=$(($(date +%s) - t0))
    new=$(comm -13 <(echo "$before") <(ls "$RESULTS") | tr '\n' ' ')
    echo "== $name: rc $rc in ${took}s (limit ${limit}s)${new:+ -> $new}"
    tail -n 6 "$WORK/logs/$name.log" | sed 's/^/   | /'
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$limit" "$new" "$*" >>"$WORK/steps.tsv"
    return $rc
}

# ------------------------------------------------------------------ install (there)
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if ((!DRY)); then
    if [[ -f $WHEELS/carry.txt ]]; then
        step install "$INSTALL_S" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --target "$WORK/site" --find-links "$WHEELS" -r "$WHEELS/carry.txt"
        export PYTHONPATH=$REPO:$WORK/site${PYTHONPATH#"$REPO"}
    else
        echo "gpu.sh: no $WHEELS/carry.txt: run 'bash benchmarks/gpu.sh --prepare' where pip works, then carry .wheels"
    fi
else
    echo "dry run on CPU with $PYTHON: models $MODELS, tiny settings, no install"
fi
"$PYTHON" -c "
import torch, zarr, dask, distributed, losa_cache
cuda = torch.cuda.is_available()
print('torch', torch.__version__, 'zarr', zarr.__version__, torch.cuda.get_device_name(0) if cuda else 'cpu')
assert cuda or $DRY, 'no CUDA device'
" || {
    echo "gpu.sh: needs CUDA torch and the carried wheels (see above); on a CPU use --dry-run" >&2
    exit 2
}

# ------------------------------------------------------------------ benchmarks
for model in $MODELS; do
    store=$WORK/$model.zarr
    # shellcheck disable=SC2046  # the *_args functions print flags to split
    step "extract-$model" "$(limit_of "extract-$model")" "$PYTHON" benchmarks/extract.py \
        --model "$model" "${RANDOM_INIT[@]}" $(extract_args "$model")
    # train.py and sweep.py share one store of evenly:3 blocks (sweep.py's layer grid)
    # shellcheck disable=SC2046
    if step "store-$model" "$(limit_of "store-$model")" "$PYTHON" benchmarks/_gpu.py store \
        --model "$model" "${RANDOM_INIT[@]}" --store "$store" --layers evenly:3 $(store_args "$model"); then
        # shellcheck disable=SC2046
        step "train-$model" "$(limit_of "train-$model")" "$PYTHON" benchmarks/train.py \
            --store "$store" --layers evenly:3 $(train_args "$model")
        # shellcheck disable=SC2046
        step "sweep-$model" "$(limit_of "sweep-$model")" "$PYTHON" benchmarks/sweep.py \
            --store "$store" $(sweep_args "$model")
    else
        for s in train sweep; do
            echo "== $s-$model: skipped, its store was not built"
            printf '%s\tskipped\t0\t0\t\tno store\n' "$s-$model" >>"$WORK/steps.tsv"
        done
    fi
    rm -rf "$store"
done

# ------------------------------------------------------------------ summary
SUMMARY=$RESULTS/gpu-$STAMP.json
"$PYTHON" - "$WORK/steps.tsv" "$SUMMARY" "$BUDGET" "$START" "$DRY" "$MODELS" <<'EOF'
import json, sys, time
tsv, out, budget, start, dry, models = sys.argv[1:]
steps = []
for line in open(tsv).read().splitlines():
    name, rc, took, limit, new, cmd = line.split("\t")
    skipped = rc == "skipped"
    steps.append({
        "step": name, "rc": None if skipped else int(rc), "skipped": skipped,
        "seconds": int(took), "limit_s": int(limit),
        "timed_out": rc in ("124", "137"), "results": new.split(), "command": cmd,
    })
doc = {"benchmark": "gpu.sh", "dry_run": dry == "1", "models": models.split(),
       "budget_s": int(budget), "wall_s": round(time.time() - int(start)),
       "ok": all(s["rc"] == 0 for s in steps), "steps": steps}
open(out, "w").write(json.dumps(doc, indent=2, sort_keys=True))
EOF
echo "summary: $SUMMARY ($(($(date +%s) - START))s of ${BUDGET}s)"
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    cp "$SUMMARY" "$OUT/"
    read -ra written <<<"$(cut -f5 "$WORK/steps.tsv" | tr '\n' ' ')"
    tar czf "$OUT/gpu-results-$STAMP.tar.gz" -C "$RESULTS" "${written[@]}" -C "$WORK" logs
    echo "copied the summary and gpu-results-$STAMP.tar.gz (results JSON, step logs) to $OUT"
fi
"$PYTHON" -c "import json, sys; sys.exit(0 if json.load(open('$SUMMARY'))['ok'] else 1)"
