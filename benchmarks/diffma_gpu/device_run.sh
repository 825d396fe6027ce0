# The GPU call of README "DiffMa-B on a GPU": wheels the image lacks are carried in .whl, the latents
# of prep.py in local/gpu (LATENTS); results under $OUT (pack.py: at most 8 files, under 16 MiB each).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
python3 benchmarks/diffma_gpu/bench_step.py 8 2>&1 | grep -v Warn | tee $OUT/bench.log
B=${B:-260}  # seconds of training per model
python3 benchmarks/diffma_gpu/train_budget.py b $B /tmp/runs/b > $OUT/b.log 2>&1 &
python3 benchmarks/diffma_gpu/train_budget.py s $B /tmp/runs/s > $OUT/s.log 2>&1 &
wait
grep "^\[" $OUT/b.log $OUT/s.log
python3 benchmarks/diffma_gpu/pack.py /tmp/runs/b /tmp/runs/s $OUT
