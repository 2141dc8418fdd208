"""The priors that judge a render, and score distillation (DreamFusion §3, Eq. 3).

diffusion (the noise schedule) -> sds (the SDS surrogate and guidance), and the three priors
behind one interface: bank (the closed-form prior of an image bank), stable_diffusion (a
diffusers Flax pipeline) with sd_checkpoint (reading its files). Imports only dfjax.scene.
"""
