"""SDS on the vertices of an existing mesh (DreamFusion, "after optimisation").

rasterize (a soft rasteriser, SoftRas) and regularizers (Laplacian, edge length) -> refine
(the jitted Adam step and its loop) -> `python -m dfjax.mesh_sds` (__main__).
"""
