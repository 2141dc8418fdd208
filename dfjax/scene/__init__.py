"""The scene: pure jnp math of one rendered view (DreamFusion §3.1, App. A.2).

cameras -> mip -> field -> shading, background -> render; losses (orientation, opacity).
The bottom of dfjax: these modules import only each other and dfjax.errors.
"""
