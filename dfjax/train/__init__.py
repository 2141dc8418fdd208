"""Training: the scene from a config, the data-parallel step, checkpoints, logs and the loop.

config_checks; distributed (several processes: joining JAX's runtime, who writes); model
(the Scene and its renders) and prior_setup (the prior a config names) -> step (TrainState,
the sharded SDS step) -> checkpoint, logs -> loop (the run loop) and restore (a run read
back). Imports scene, priors and toy.
"""
