"""A run's outputs: meshes by marching cubes and a turntable video.

The mesh is the level set τ = threshold of the density field (DreamFusion §4, "after
optimisation": marching cubes, `export.mesh`), with vertices in world units; the threshold is
`export.threshold`, or chosen so the level set's silhouettes match the renders'
(`surface_threshold`). mesh.ply carries the albedo as vertex colours; mesh.glb and mesh.obj
(+ mesh.mtl, mesh_albedo.png) are simplified to a face budget, UV-unwrapped and carry it as a
baked texture (`export.texture`).
The video (`export.video`) shows colour, normals and textureless renders side by side,
orbiting at a fixed elevation from the front.

Data flow: train.model (the scene and its previews), export.mesh, export.texture and
export.video -> here -> dfjax.run (the end-of-training export) and the export CLI
(`python -m dfjax.export`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile

from etils import epath
import numpy as np

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib
from dfjax.export import texture as texture_lib
from dfjax.export import video as video_lib
from dfjax.train import checkpoint as checkpoint_lib
from dfjax.train import config_checks
from dfjax.train import model as model_lib


MESH_NAME = "mesh"  # mesh.<format>
VIDEO_NAME = "turntable"  # turntable.<video_format>


def turntable_frames(scene, params, *, step: int) -> np.ndarray:
  """[T, H, 3·W, 3] frames: colour | normals | textureless, azimuth 0 (front) first."""
  e = scene.config.export
  cameras = video_lib.turntable_cameras(num_frames=e.video_frames, elevation_deg=e.video_elevation,
                                        distance=e.video_distance, fov_deg=e.video_fov,
                                        resolution=e.video_resolution)
  videos = model_lib.render_previews(scene, params, cameras, step)
  return video_lib.side_by_side([videos[mode] for mode in model_lib.PREVIEW_MODES])


# Views a chosen surface threshold matches: azimuths around the object at the turntable's
# elevation, distance and field of view, at this many pixels per side.
THRESHOLD_VIEWS, THRESHOLD_RESOLUTION = 8, 64


def surface_threshold(scene, params, *, step: int, threshold: float | None = None,
                      density_fn=None):
  """The density level of the exported surface, and how it was set (for the log line).

  `threshold` (or else `export.threshold`) when positive; 0 chooses it from the renders: the
  level whose silhouettes match the deterministic renders' opacity silhouettes over
  THRESHOLD_VIEWS views (`mesh.silhouette_threshold`), so the mesh is the object the renders
  and the video show.

  `density_fn` is the field's point density at `step` (`mesh.point_fns_from_field`), built
  here when not given.

  Returns:
    (threshold, a few words on its origin).
  """
  config = scene.config
  threshold = config.export.threshold if threshold is None else threshold
  if threshold > 0:
    return float(threshold), "as set"
  e = config.export
  if density_fn is None:
    density_fn, _ = mesh_lib.point_fns_from_field(
        functools.partial(scene.field.apply, params["field"]),
        sample_variance=float(model_lib.cov_scale_at(step, config)))
  cameras = video_lib.turntable_cameras(
      num_frames=THRESHOLD_VIEWS, elevation_deg=e.video_elevation, distance=e.video_distance,
      fov_deg=e.video_fov, resolution=THRESHOLD_RESOLUTION)
  profiles = [mesh_lib.ray_profiles(density_fn, camera,
                                    num_samples=model_lib.grid_free_samples(config),
                                    bound_radius=config.render.bound_radius)
              for camera in cameras]
  chosen, iou = mesh_lib.silhouette_threshold(np.stack([p[0] for p in profiles]),
                                              np.stack([p[1] for p in profiles]))
  return chosen, f"chosen from {THRESHOLD_VIEWS} renders, silhouette IoU {iou:.2f}"


def write_meshes(mesh: mesh_lib.Mesh, albedo_fn, workdir: str, *, formats, texture_size: int,
                 faces: int) -> tuple[list[str], str]:
  """Writes mesh.<format> for each format: the PLY with vertex colours first (it cannot
  fail), then the textured OBJ / GLB, simplified and unwrapped once for both.

  Returns:
    (the paths written, a summary of the mesh for the log line).
  """
  written, summary, textured = [], f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces", None
  for name in sorted(formats, key=lambda name: name != "ply"):
    path = os.path.join(workdir, f"{MESH_NAME}.{name}")
    if name == "ply":
      mesh_lib.write_mesh(mesh, path)
      written.append(path)
      continue
    if textured is None:
      textured = texture_lib.textured_mesh(mesh, albedo_fn, texture_size=texture_size,
                                           max_faces=faces)
      summary += f" ({len(textured.faces)} textured)"
    written += texture_lib.write_textured_mesh(textured, path)
  return written, summary


@contextlib.contextmanager
def staged_folder(workdir: str):
  """A local folder to write a run's exports into.

  The writers (trimesh, imageio, PIL) need local files. A local `workdir` is used as it is;
  for a bucket (gs://..., any etils.epath URL) the files are written to a temporary folder
  and copied into `workdir` through epath when the block ends.
  """
  if checkpoint_lib.is_local(workdir):
    yield workdir
    return
  with tempfile.TemporaryDirectory() as local:
    yield local
    destination = epath.Path(workdir)
    destination.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(local)):
      epath.Path(local, name).copy(destination / name, overwrite=True)


def export_run(scene, params, workdir: str, *, step: int, resolution: int | None = None,
               threshold: float | None = None, formats: str | None = None,
               texture_size: int | None = None, faces: int | None = None, video: bool = True,
               video_format: str | None = None, strict: bool = True) -> list[str]:
  """Write mesh.<format> for each format and the turntable video of `params` into `workdir`.

  Args:
    workdir: the run directory, local or a bucket URL (see `staged_folder`).
    resolution, threshold, formats, texture_size, faces, video_format: override the run's
      `export` config fields of the same names.
    strict: raise when no surface is found or the textured mesh fails; otherwise print why,
      skip the rest of the meshes and still write the video (the end of training uses this,
      so a run is never lost to export).

  Returns:
    The paths written.
  """
  e = scene.config.export
  field_fn = functools.partial(scene.field.apply, params["field"])
  density_fn, albedo_fn = mesh_lib.point_fns_from_field(
      field_fn, sample_variance=float(model_lib.cov_scale_at(step, scene.config)))
  formats = config_checks.export_formats(formats or e.formats, name="export formats")
  written, summary = [], "no mesh"
  with staged_folder(workdir) as folder:
    try:
      level, origin = surface_threshold(scene, params, step=step, threshold=threshold,
                                        density_fn=density_fn)
      mesh = mesh_lib.extract_mesh(density_fn, albedo_fn, resolution=resolution or e.resolution,
                                   bound=e.bound, threshold=level)
      written, summary = write_meshes(mesh, albedo_fn, folder, formats=formats,
                                      texture_size=texture_size or e.texture_size,
                                      faces=e.faces if faces is None else faces)
      summary += f" at density {level:.3g} ({origin})"
    except UserError as error:
      if strict:
        raise
      print(f"warning: mesh skipped: {error}; re-export with python -m dfjax.export "
            f"--workdir={workdir} and the flags named above", flush=True)
    if video:
      path = os.path.join(folder, f"{VIDEO_NAME}.{video_format or e.video_format}")
      video_lib.write_video(turntable_frames(scene, params, step=step), path, fps=20)
      written.append(path)
  if not checkpoint_lib.is_local(workdir):
    written = [str(epath.Path(workdir) / os.path.basename(path)) for path in written]
  print(f"exported {summary} at step {step}: "
        + ", ".join(os.path.basename(p) for p in written), flush=True)
  return written
