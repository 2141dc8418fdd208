"""Export: what a run leaves behind (DreamFusion §4, "after optimisation").

mesh (marching cubes, mesh files), video (turntables) and texture (UV atlas, baked albedo) ->
outputs (a run's meshes and video) -> `python -m dfjax.export` (__main__). Imports train.model
for the scene's renders and train.restore for a finished run.
"""
