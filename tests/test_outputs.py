"""A run's exports into a bucket: written to a local folder, then copied through etils.epath."""
import os

from dfjax.export import outputs
from dfjax.train import checkpoint


def test_a_local_workdir_is_written_directly(tmp_path):
  assert checkpoint.is_local(str(tmp_path)) and not checkpoint.is_local("gs://bucket/run")
  with outputs.staged_folder(str(tmp_path)) as folder:
    assert folder == str(tmp_path)


def test_exports_to_a_bucket_are_staged_locally_and_copied(tmp_path, monkeypatch):
  # A local folder stands in for the bucket (none can be reached from the tests): epath copies
  # to it exactly as to gs://, through the same call.
  destination = tmp_path / "bucket" / "run"
  monkeypatch.setattr(checkpoint, "is_local", lambda path: False)
  with outputs.staged_folder(str(destination)) as folder:
    assert folder != str(destination) and os.path.isdir(folder)
    with open(os.path.join(folder, "mesh.ply"), "wb") as f:
      f.write(b"ply\n")
    with open(os.path.join(folder, "turntable.mp4"), "wb") as f:
      f.write(bytes(range(256)))
    assert not destination.exists()  # nothing is copied before the writers finish
  assert sorted(os.listdir(destination)) == ["mesh.ply", "turntable.mp4"]
  assert (destination / "turntable.mp4").read_bytes() == bytes(range(256))
  assert not os.path.exists(folder)  # the staging folder is gone
