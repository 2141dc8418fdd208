"""dfjax: DreamFusion (text-to-3D by Score Distillation Sampling) in pure JAX."""
import setuptools

setuptools.setup(
    name="dfjax",
    version="0.1.0",
    description="DreamFusion in pure JAX: Mip-NeRF field, volume renderer and SDS with a "
    "frozen diffusion prior.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["dfjax", "dfjax.*", "configs"]),
    # The shipped toy Stable Diffusion (dfjax/assets/toy_sd, see its MODEL_CARD.md).
    package_data={"dfjax": ["assets/toy_sd/*.*", "assets/toy_sd/*/*"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        # The last releases that still ship Flax classes (see README, "Pins").
        "diffusers[flax]>=0.35,<0.40",
        "transformers>=4.45,<5",
        "safetensors>=0.4",
        "ml-collections>=0.1.1",
        "absl-py>=1.0",
        "PyMCubes>=0.1.4",
        "numpy>=1.24",
        "trimesh>=4.0",
        "pillow>=10.0",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.4.9",  # MP4 turntables; ships its own ffmpeg executable
        "xatlas>=0.0.9",  # UV atlas of the textured meshes
        "fast-simplification>=0.1.7",  # face budget of the textured meshes
        "tensorboardX>=2.6",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            # pytest.ini runs the suite in two worker processes, one test file each at a time.
            "pytest-xdist>=3.3",
            "scipy>=1.10",
            # tests/test_notebook.py runs notebooks/dreamfusion_colab.ipynb in a kernel.
            "nbformat>=5.7",
            "nbclient>=0.8",
            "ipykernel>=6",
            # Only the tests need torch: they build PyTorch-format safetensors checkpoints
            # to check the torch-free conversion against diffusers' own PyTorch models.
            "torch==2.13.0",
        ],
    },
)
