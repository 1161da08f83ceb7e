"""The encoder as on main at b4508b1 (pipeline/model/{encoder,components,kernels,config,inputs}.py, copied
unchanged), the "before" of bench/gpu_encoder.py: a GPU machine gets a copy of the work tree without its
git history, so the old code travels as files. Imported as its own package `_baseline_model`."""
