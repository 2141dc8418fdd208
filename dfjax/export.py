"""Export a run: a coloured mesh by marching cubes and a turntable video.

  python -m dfjax.export --workdir=DIR [--resolution=N] [--threshold=T] [--step=S] [--novideo]

re-exports from any checkpoint of a run (default: the latest). The mesh is the level set
τ = threshold of the density field (DreamFusion §4, "after optimisation": marching cubes),
with vertices in world units and vertex colours from the albedo; the video shows colour,
normals and textureless renders side by side, orbiting at a fixed elevation from the front.
"""
from __future__ import annotations

import functools
import json
import os

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfjax import main as main_lib
from dfjax import mesh as mesh_lib
from dfjax import video as video_lib
from dfjax.errors import UserError

MESH_FILES = ("mesh.ply", "mesh.glb")
VIDEO_FILE = "turntable.gif"


def turntable_frames(scene, params, *, step: int) -> np.ndarray:
  """[T, H, 3·W, 3] frames: colour | normals | textureless, azimuth 0 (front) first."""
  from dfjax import train  # pylint: disable=g-import-not-at-top
  e = scene.config.export
  cameras = video_lib.turntable_cameras(num_frames=e.video_frames, elevation_deg=e.video_elevation,
                                        distance=e.video_distance, fov_deg=e.video_fov,
                                        resolution=e.video_resolution)
  preview = jax.jit(functools.partial(train.render_preview, scene), static_argnames="mode")
  videos = [np.stack([np.asarray(preview(params, camera, step, mode=mode)) for camera in cameras])
            for mode in ("albedo", "normals", "textureless")]
  return video_lib.side_by_side(videos)


def export_run(scene, params, workdir: str, *, step: int, resolution: int | None = None,
               threshold: float | None = None, video: bool = True,
               strict: bool = True) -> list[str]:
  """Write mesh.ply, mesh.glb and the turntable video of `params` into `workdir`.

  Args:
    strict: raise when no surface is found; otherwise print why, skip the mesh and still
      write the video (the end of training uses this, so a run is never lost to export).

  Returns:
    The paths written.
  """
  from dfjax import train  # pylint: disable=g-import-not-at-top
  e = scene.config.export
  field_fn = functools.partial(scene.field.apply, params["field"])
  density_fn, albedo_fn = mesh_lib.point_fns_from_field(
      field_fn, sample_variance=float(train.cov_scale_at(step, scene.config)))
  written, summary = [], "no mesh"
  try:
    mesh = mesh_lib.extract_mesh(density_fn, albedo_fn, resolution=resolution or e.resolution,
                                 bound=e.bound, threshold=threshold or e.threshold)
  except UserError as error:
    if strict:
      raise
    print(f"warning: mesh skipped: {error}; re-export with python -m dfjax.export "
          f"--workdir={workdir} --threshold=T", flush=True)
  else:
    summary = f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces"
    for name in MESH_FILES:
      mesh_lib.write_mesh(mesh, os.path.join(workdir, name))
      written.append(os.path.join(workdir, name))
  if video:
    path = os.path.join(workdir, VIDEO_FILE)
    video_lib.write_video(turntable_frames(scene, params, step=step), path, fps=20)
    written.append(path)
  print(f"exported {summary} at step {step}: "
        + ", ".join(os.path.basename(p) for p in written), flush=True)
  return written


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: --workdir must be a dfjax run directory")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_params(config, workdir: str, *, step: int | None):
  """The scene and parameters of a run's checkpoint (the latest when `step` is None)."""
  from dfjax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dfjax import train  # pylint: disable=g-import-not-at-top
  scene = train.create_scene(config, prior=None, camera_kwargs={})
  optimizer = train.create_optimizer(config)
  abstract = jax.eval_shape(lambda: train.create_train_state(scene, optimizer,
                                                             jax.random.PRNGKey(0)))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract)
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=1, keep=10**6, async_save=False)
  steps = checkpointer.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {workdir}/checkpoints: train first")
  if step is not None and step not in steps:
    raise UserError(f"no checkpoint at step {step} in {workdir}; available: {steps}")
  step = steps[-1] if step is None else step
  state = checkpointer.restore(abstract, step=step)
  checkpointer.close()
  return scene, state.params, step


FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  flags.DEFINE_string("workdir", None, "Run directory to export from.")
  flags.DEFINE_integer("resolution", None, "Marching-cubes grid size (default: the run's).")
  flags.DEFINE_float("threshold", None, "Density level of the surface (default: the run's).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("video", True, "Also write the turntable video.")


def main(argv):
  with main_lib.user_errors():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR --step=S")
    if not FLAGS.workdir:
      raise UserError("--workdir is required, e.g. --workdir=runs/toy")
    if FLAGS.resolution is not None and FLAGS.resolution < 8:
      raise UserError(f"--resolution must be at least 8, got {FLAGS.resolution}")
    if FLAGS.threshold is not None and FLAGS.threshold <= 0:
      raise UserError(f"--threshold must be positive, got {FLAGS.threshold}")
    config = load_run_config(FLAGS.workdir)
    scene, params, step = restore_params(config, FLAGS.workdir, step=FLAGS.step)
    export_run(scene, params, FLAGS.workdir, step=step, resolution=FLAGS.resolution,
               threshold=FLAGS.threshold, video=FLAGS.video)


if __name__ == "__main__":
  define_flags()
  main_lib.run(main)
