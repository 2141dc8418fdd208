"""A run's outputs: a coloured mesh by marching cubes and a turntable video.

The mesh is the level set τ = threshold of the density field (DreamFusion §4, "after
optimisation": marching cubes, `export.mesh`), with vertices in world units and vertex colours
from the albedo; the video (`export.video`) shows colour, normals and textureless renders side
by side, orbiting at a fixed elevation from the front.

Data flow: train.model (the scene and its previews), export.mesh and export.video -> here ->
dfjax.run (the end-of-training export) and the export CLI (`python -m dfjax.export`).
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib
from dfjax.export import video as video_lib
from dfjax.train import model as model_lib


MESH_FILES = ("mesh.ply", "mesh.glb")


VIDEO_FILE = "turntable.gif"


def turntable_frames(scene, params, *, step: int) -> np.ndarray:
  """[T, H, 3·W, 3] frames: colour | normals | textureless, azimuth 0 (front) first."""
  e = scene.config.export
  cameras = video_lib.turntable_cameras(num_frames=e.video_frames, elevation_deg=e.video_elevation,
                                        distance=e.video_distance, fov_deg=e.video_fov,
                                        resolution=e.video_resolution)
  preview = jax.jit(functools.partial(model_lib.render_preview, scene), static_argnames="mode")
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
  e = scene.config.export
  field_fn = functools.partial(scene.field.apply, params["field"])
  density_fn, albedo_fn = mesh_lib.point_fns_from_field(
      field_fn, sample_variance=float(model_lib.cov_scale_at(step, scene.config)))
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
