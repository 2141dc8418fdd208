"""Export: what a run leaves behind (DreamFusion §4, "after optimisation").

mesh (marching cubes, mesh files) and video (turntables) -> outputs (a run's mesh and video)
-> `python -m dfjax.export` (__main__). Imports train.model for the scene's renders.
"""
