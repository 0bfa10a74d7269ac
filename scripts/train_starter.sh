#!/usr/bin/env bash
# Train the three starter stages (IRM 64, IRM 256, TEM) side by side on one GPU (or on the CPU),
# each for MINUTES, and collect the exported models, last sample sheets and one log in DEST.
#
#   GPU (the recipe of weights/MODEL_CARD.md):  DEST=out/starter bash scripts/train_starter.sh
#   CPU smoke test:  PRESET=tiny MINUTES=0.1 BATCH64=2 BATCH256=1 BATCHTEM=1 WORKERS=0 DEVICE=cpu THREADS=1 \
#                    DATA=.gpu/faces/holdout DEST=/tmp/starter bash scripts/train_starter.sh
set -u
DATA=${DATA:-.gpu/faces/train}
WORK=${WORK:-/tmp/starter_work}
DEST=${DEST:-${OUT:-out/starter}}
PY=${PY:-python3}
MINUTES=${MINUTES:-6}
PRESET=${PRESET:-small}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-5}
SAMPLE_EVERY=${SAMPLE_EVERY:-100000}
mkdir -p "$WORK" "$DEST"
export PYTHONPATH=${PYTHONPATH:-.} COMFY_DIFFBFR_PROGRESS=0 PYTHONUNBUFFERED=1

train() {  # stage batch extra-args...
  local stage=$1 batch=$2
  shift 2
  exec "$PY" -m comfy_diffbfr train --stage "$stage" --data "$DATA" --out "$WORK/$stage" --preset "$PRESET" \
    --batch-size "$batch" --max-minutes "$MINUTES" --steps 1000000 --lr 2e-4 --warmup 200 --ema 0.999 \
    --ckpt-every 0 --sample-every "$SAMPLE_EVERY" --log-every 100 --workers "$WORKERS" --device "$DEVICE" \
    --export "$DEST/$stage.safetensors" ${THREADS:+--threads $THREADS} "$@" >"$WORK/$stage.log" 2>&1
}

train irm64 "${BATCH64:-32}" &
p1=$!
train irm256 "${BATCH256:-12}" &
p2=$!
train tem "${BATCHTEM:-16}" ${TEM_ARGS:-} &
p3=$!
# Fail fast: a stage that dies in its first 90 s (a bad setting, a broken import) stops the run,
# so a lent GPU's minutes are not spent on the other two alone.
declare -A finished=()
for _ in $(seq 90); do
  sleep 1
  for p in $p1 $p2 $p3; do
    [ -n "${finished[$p]:-}" ] && continue
    kill -0 "$p" 2>/dev/null && continue
    if wait "$p"; then
      finished[$p]=1
    else
      kill $p1 $p2 $p3 2>/dev/null
      tail -n 30 "$WORK"/*.log
      exit 3
    fi
  done
  [ ${#finished[@]} -eq 3 ] && break
done
rc=0
for p in $p1 $p2 $p3; do [ -n "${finished[$p]:-}" ] || wait "$p" || rc=1; done
for stage in irm64 irm256 tem; do
  echo "===== $stage" && cat "$WORK/$stage.log"
  last=$(ls "$WORK/$stage/samples/"step_*.png 2>/dev/null | tail -n 1)
  [ -n "$last" ] && cp "$last" "$DEST/${stage}_samples.png"
done >"$DEST/train.log"
exit $rc
