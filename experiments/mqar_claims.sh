#!/usr/bin/env bash
# Issue 27's MQAR claims on one GPU, every run at once, each capped at MIN minutes (default 6.5):
# Mixture-of-Memories against its single memory (Gated DeltaNet, one memory's state) on a harder
# MQAR (32 pairs, length 128, vocab 256) with seeds 0 and 1 and on the default one; JRT-Prompt on
# and off (Based, feature_dim 4) with seeds 0 and 1, and JRT-RNN; DeltaNet and Gated DeltaNet
# beside GLA and Mamba-2 on the harder MQAR; Based's recipe over windows 4-32 x feature_dim 4, 16
# (experiments/based_tradeoff.py, one process per point). Writes OUT (default
# experiments/results/mqar_claims): summaries27.txt (each run's summary.json on one line),
# tradeoff27.json and runs27.tar.gz (configs, metrics, logs).
#     OUT=$OUT MIN=6.5 bash experiments/mqar_claims.sh      # from the repo root, on a GPU
#     TOY=1 MIN=1 bash experiments/mqar_claims.sh           # 3 steps each, on a CPU (minutes)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.03
OUTD=${OUT:-experiments/results/mqar_claims}; W=${WORK:-/tmp/mqar_claims}; rm -rf $W; mkdir -p $W/logs $OUTD
(nvidia-smi --query-gpu=name,driver_version --format=csv; git log -1 --format=%H) > $OUTD/gpu27.txt 2>&1
MIN=${MIN:-6.5}; extra=(); [ -n "$TOY" ] && extra=(optim.steps=3 eval_every=2 task.num_train=64 task.num_val=8 task.num_test=8 optim.batch_size=8)
LIMIT=$(python -c "print(int($MIN*60+50))")
go() { local key=$1; shift; timeout $LIMIT python -m seqzoo.cli train "$@" max_minutes=$MIN "${extra[@]}" --run-dir $W/runs/$key --overwrite --no-progress > $W/logs/$key.log 2>&1 & }
HARD=(task.num_kv_pairs=32 task.seq_len=128 task.vocab_size=256)
for s in 0 1; do
  go mom_hard_s$s mqar_mom optim.steps=3000 seed=$s "${HARD[@]}"
  go single_hard_s$s mqar_mom_single optim.steps=3000 seed=$s "${HARD[@]}"
  go jrt_on_s$s mqar_jrt_based optim.steps=4000 seed=$s
  go jrt_off_s$s mqar_jrt_based optim.steps=4000 seed=$s task.context_repeats=1 task.seq_len=64
done
go mom_s0 mqar_mom optim.steps=3000 seed=0
go single_s0 mqar_mom_single optim.steps=3000 seed=0
go jrt_rnn_s0 mqar_jrt_rnn optim.steps=4000 seed=0
for m in deltanet gated_deltanet gla; do go ${m}_hard_s0 mqar_$m optim.steps=3000 seed=0 "${HARD[@]}"; done
go mamba2_hard_s0 mqar_mamba model.mixer=mamba2 optim.steps=3000 seed=0 "${HARD[@]}"
for w in 4 8 16 32; do for f in 4 16; do
  (cd $W && timeout $LIMIT python $ROOT/experiments/based_tradeoff.py --out $W/tradeoff_w${w}_f$f --windows $w --feature-dims $f -- optim.steps=1500 max_minutes=$MIN "${extra[@]}" > $W/logs/tradeoff_w${w}_f$f.log 2>&1) &
done; done
wait
for f in $W/runs/*/summary.json; do echo "$(basename $(dirname $f)) $(cat $f | tr -d '\n')"; done > $OUTD/summaries27.txt
cat $W/tradeoff_w*/based_tradeoff.json > $OUTD/tradeoff27.json 2>/dev/null
tar czf $OUTD/runs27.tar.gz -C $W logs $(cd $W && ls -d runs/*/metrics.jsonl runs/*/config.toml runs/*/summary.json tradeoff_w*/ runs/based_tradeoff/*/metrics.jsonl runs/based_tradeoff/*/summary.json 2>/dev/null)
