"""dfjax: DreamFusion (text-to-3D by Score Distillation Sampling) in pure JAX.

The packages follow the data, each importing only those before it (tests/test_layout.py):
errors -> scene -> priors -> toy -> train -> export -> mesh_sds, eval -> run -> cli and the
entry points (`python -m dfjax.main`, `dfjax.export`, `dfjax.mesh_sds`, `dfjax.evaluate`).
"""
