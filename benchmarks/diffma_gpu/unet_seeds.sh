# The GPU call of README #13 "a seed study of hub:unet_sts's recipe": five seeds side by side on one GPU,
# each keeping epochs 4-8 (unet_seeds.py); the training pairs (int16, local/gpu13/train) and the wheels the
# image lacks (.whl) are carried. Scored afterwards on the CPU: unet_seeds_unpack.py, diffma_sampling.py.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
D=${DATA:-local/gpu13/train}
OUT=${OUT:-/tmp/unet_seeds_out}
mkdir -p $OUT
for s in ${SEEDS:-2 3 4 5 6}; do
  OMP_NUM_THREADS=3 python3 benchmarks/diffma_gpu/unet_seeds.py configs/diffma_unet_baseline.yaml $s 4 $OUT/s$s.safetensors \
    data.train=$D data.val=$D train.epochs=8 loss.kind=l2 "data.ct_windows=[[-200,300]]" train.amp=false $EXTRA > $OUT/log$s.txt 2>&1 &
done
wait
cat $OUT/log*.txt | grep -v Warn > $OUT/seeds.txt; rm -f $OUT/log*.txt
ls $OUT/*.json | tail -n +2 | xargs -r rm
ls -la $OUT
