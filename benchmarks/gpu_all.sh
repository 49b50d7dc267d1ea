#!/usr/bin/env bash
# Every GPU figure in benchmarks/README.md, in one go (about 7 minutes on one H200), each step under its own
# time limit so one slow step cannot take the others with it. Needs hooked_clip importable with CUDA torch:
#     bash benchmarks/gpu_all.sh 2>&1 | tee gpu.log
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { local limit=$1; shift; echo; echo "### $*"; local t0=$SECONDS
         timeout "$limit" "$PY" "$@" || echo "### step failed or ran past ${limit}s (rc=$?)"; echo "### $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step 150 benchmarks/gpu.py --repeats 3                                  # forward vs open_clip, 490-pair CTE B/32 + L/14, fp16/bf16, memory
step 100 benchmarks/patching.py --device cuda --pairs 32 --repeats 2 --rome-pairs 490   # vs the paper's procedure; ROME
step 90  benchmarks/attribution.py --device cuda --pairs 490 --repeats 3               # AtP / IG vs exact patching
step 60  benchmarks/vision.py --device cuda --batch 256 --repeats 5                    # image tower vs open_clip
step 60  benchmarks/vision.py --device cuda --patching --patch-layers 12 --patch-images 16 --repeats 3
step 200 benchmarks/study_end_to_end.py --device cuda --rome                           # the study at B/32 size, and the demo
