#!/usr/bin/env bash
# The GPU checks in one go, for a GPU machine without network (../shared/device/README.md): install the wheels
# its image lacks, run the CUDA tests, then time injection and FSFT at the paper's sizes (benchmarks/paper_shapes.py).
#
#   benchmarks/gpu_check.sh WHEELS_DIR TOKENIZER_DIR OUT_DIR
#
# TOKENIZER_DIR: SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja), as
# hf_fingerprint.load_model caches them. Every part writes its results to OUT_DIR as it ends. SHAPES_ARGS: more
# arguments for paper_shapes.py (say --fsft-shape none); TESTS_TIMEOUT=0 skips the tests.
set -uo pipefail
wheels=$1 tokenizer=$2 out=$3
mkdir -p "$out"
python3 -m pip install -q --no-index --find-links "$wheels" --no-deps trl datasets gguf cryptography cffi pycparser \
  dill multiprocess || exit 1
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)" | tee -a "$out/gpu.txt"
[ "${TESTS_TIMEOUT:-150}" = 0 ] || timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 40 | tee "$out/tests_cuda.txt"
timeout "${SHAPES_TIMEOUT:-330}" python3 benchmarks/paper_shapes.py --tokenizer "$tokenizer" --out "$out" ${SHAPES_ARGS:-} 2>&1 \
  | grep --line-buffered -v -i "warn" | tee "$out/paper_shapes.log" | tail -n 60
