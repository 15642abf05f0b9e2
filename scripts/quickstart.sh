#!/usr/bin/env bash
# The main job on built-in data, as the README's first command runs it:
# glyph data set -> train -> embed -> index -> query. Re-running it continues where it stopped.
set -euo pipefail
cd "${LSCINDEX_WORKDIR:-$(dirname "$0")/..}"

# No augmentation: fixed targets learn the held-out fonts 10 points better without random crops
# in nine epochs (docs/results.md, "The README recipe with the new targets").
model=resnet10t epochs=9 data_opts=() train_opts=(--batch-size 128 --lr 3e-3 --no-augment)
if [ -n "${LSCINDEX_QUICKSTART_FAST:-}" ]; then
  # The test suite runs the same steps on a tiny set with a tiny model.
  model=test_resnet epochs=1 data_opts=(--classes 12 --size 16)
  train_opts=(--batch-size 16 --img-size 16 --max-steps 3 --workers 0 --no-augment)
fi

echo "== 1/5 glyph data set: characters rendered from the fonts shipped in pip packages"
if [ ! -f data/glyphs/manifest.parquet ]; then
  lscindex data glyphs data/glyphs "${data_opts[@]}"
fi

echo "== 2/5 train $model on fixed v21 targets (validation: fonts never seen in training)"
resume=()
if [ -f runs/glyphs/config.json ]; then resume=(--resume); fi
lscindex train data/glyphs --out runs/glyphs --model "$model" --epochs "$epochs" \
  "${train_opts[@]}" "${resume[@]}"

echo "== 3/5 embed every image into a zarr store"
lscindex embed data/glyphs --run runs/glyphs --out emb.zarr

echo "== 4/5 index the store with FAISS"
lscindex index emb.zarr --factory HNSW32

echo "== 5/5 query an image of a held-out font"
# An "N" from a held-out font, else the first held-out image (a glob, not a pipeline: under
# pipefail, `find | sort | head` dies of SIGPIPE once the listing outgrows the pipe buffer).
images=(data/glyphs/val/U+00004E/*.png)
if [ ! -f "${images[0]}" ]; then images=(data/glyphs/val/*/*.png); fi
lscindex query "${images[0]}"
