"""dfjax: DreamFusion (text-to-3D by Score Distillation Sampling) in pure JAX.

The packages follow the data, each importing only those before it (tests/test_layout.py):
errors -> scene -> priors -> toy -> train -> export -> mesh_sds -> run -> api -> eval -> cli
and the entry points (`python -m dfjax.main`, `dfjax.export`, `dfjax.mesh_sds`,
`dfjax.evaluate`).

From Python: `from dfjax import api`, then `api.config`, `api.train`, `api.export`. They are
not re-exported here, since `dfjax.train` and `dfjax.export` name packages already.
"""
