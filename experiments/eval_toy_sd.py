"""The toy SD judged two ways: as a generator, and as the prior of text-to-3D.

  python experiments/eval_toy_sd.py [--model=DIR] [--samples_per_prompt=4] \
      [--objects=yellow_duck] [--seeds=0] [--grid=PATH.png] [--runs_dir=runs/eval_toy_sd]

1. Samples: guided DDIM samples of every "{caption}, {view} view" prompt of the toy world,
   labelled by their nearest training image (dfjax.eval.prior_quality): object and view-bucket
   accuracy, and a grid of one sample per prompt (rows: objects; columns: front, side, back,
   overhead). Then the relative error of the learned conditional ε̂ against the exact ε̂ of
   the training latents of the same caption and view, at --eps_timesteps (a table, and a
   plot with --eps_plot=PATH.png); --nosamples runs this comparison alone.
2. Distillation: for each object and seed, the README's command
   `python -m dfjax.main --config=configs/toy_sd.py --workdir=... --config.prompt=CAPTION`
   run as a child process and timed (compile, training and export included), then scored
   against the true object as the ablation study scores its runs (mesh IoU of the density
   grid, held-out silhouette IoU and PSNR over 12 azimuths).
Results are printed as markdown tables and appended to experiments/results/toy_sd.md.
"""
import datetime
import os
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import toy_sd  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = os.path.join(REPO, "experiments", "results", "toy_sd.md")
flags.DEFINE_string("model", toy_sd.TOY_SD_DIR, "Pipeline directory.")
flags.DEFINE_integer("samples_per_prompt", 4, "Samples per (caption, view) prompt.")
flags.DEFINE_float("guidance", 7.5, "Classifier-free guidance of the samples.")
flags.DEFINE_list("objects", ["yellow_duck"], "Toy objects to distil ('all': the seven).")
flags.DEFINE_list("seeds", ["0"], "Seeds of the distillation runs.")
flags.DEFINE_string("grid", "", "Write the sample grid here (PNG).")
flags.DEFINE_string("runs_dir", os.path.join(REPO, "runs", "eval_toy_sd"), "Run folders.")
flags.DEFINE_list("extra", [], "Extra --config.X=Y overrides of the distillation runs.")
flags.DEFINE_string("results", RESULTS, "Markdown file the tables are appended to.")
FLAGS = flags.FLAGS


def sample_scores():
  """Part 1: accuracy table rows and the grid."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import train_prior  # pylint: disable=g-import-not-at-top
  from dfjax.eval import prior_quality  # pylint: disable=g-import-not-at-top
  from dfjax.train_prior import loop  # pylint: disable=g-import-not-at-top
  from dfjax.train_prior import sampling  # pylint: disable=g-import-not-at-top
  config = train_prior.get_config()
  data = loop.load_data(config)
  sampler = sampling.PipelineSampler.load(FLAGS.model)
  start = time.time()
  images, scores = prior_quality.sample_every_prompt(
      sampler, data, samples_per_prompt=FLAGS.samples_per_prompt,
      guidance_scale=FLAGS.guidance, view_suffixes=tuple(config.view_suffixes))
  seconds = time.time() - start
  if FLAGS.grid:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    first = images[::FLAGS.samples_per_prompt]
    grid = sampling.image_grid(first, columns=4)
    Image.fromarray(np.round(grid * 255).astype(np.uint8)).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(FLAGS.grid)
  rows = [(caption, f"{accuracy:.2f}") for caption, accuracy in scores.per_caption.items()]
  rows.append(("**all**", f"**{scores.object_accuracy:.2f}** (view bucket "
               f"{scores.view_accuracy:.2f}; RMS distance to the nearest image "
               f"{scores.rms_distance:.3f}; {len(images)} samples in {seconds:.0f} s)"))
  return rows


flags.DEFINE_list("eps_timesteps", ["20", "100", "250", "500", "750", "950"],
                  "Timesteps t of the eps comparison.")
flags.DEFINE_string("eps_plot", "", "Write the eps relative error against t here (PNG).")
flags.DEFINE_bool("samples", True, "Part 1's samples (--nosamples: only its eps comparison; "
                  "--samples_per_prompt=0 skips part 1 whole).")


def eps_errors():
  """Part 1b: the relative error of the learned conditional eps against the exact eps of the
  training latents of the same caption and view bucket, per t (rows) and caption (mean)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import train_prior  # pylint: disable=g-import-not-at-top
  from dfjax.eval import prior_quality  # pylint: disable=g-import-not-at-top
  from dfjax.priors import stable_diffusion  # pylint: disable=g-import-not-at-top
  from dfjax.train_prior import loop  # pylint: disable=g-import-not-at-top
  data = loop.load_data(train_prior.get_config())
  timesteps = tuple(int(t) for t in FLAGS.eps_timesteps)
  errors = []
  for c, caption in enumerate(data.captions):
    prior = stable_diffusion.load_stable_diffusion(FLAGS.model, prompt=caption, render_size=32)
    rows = np.flatnonzero(data.caption_index == c)
    encode = jax.jit(prior.encode)
    latents = jnp.concatenate([encode(prior.params, (data.images[rows[i:i + 256]] + 1) / 2)
                               for i in range(0, len(rows), 256)])
    predict = jax.jit(lambda x, t, b, prior=prior: prior.predict_noise(prior.params, x, t, b)[0])
    errors.append(prior_quality.eps_relative_error(
        predict, jax.random.PRNGKey(c), latents=latents, latent_buckets=data.view_bucket[rows],
        alphas_cumprod=jnp.asarray(prior.alphas_cumprod), timesteps=timesteps, batch=64))
  errors = np.asarray(errors)
  if FLAGS.eps_plot:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # pylint: disable=g-import-not-at-top
    common.line_plot(FLAGS.eps_plot, timesteps, {
        "mean over captions": errors.mean(0), "largest over captions": errors.max(0),
        "smallest over captions": errors.min(0)},
        x_label="t (of 1000)", y_label="|eps_learned - eps_exact| / |eps_exact|")
  return [(t, f"{errors[:, i].mean():.3f}", f"{errors[:, i].min():.3f}-{errors[:, i].max():.3f}")
          for i, t in enumerate(timesteps)]


def distil(object_name, seed):
  """Part 2 for one run: the README command, timed, then scored."""
  import common  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(FLAGS.runs_dir, f"{object_name}_seed{seed}")
  flags = [f"--config.prior.model={FLAGS.model}"] + [f"--config.{e}" for e in FLAGS.extra]
  seconds, scores, step = common.distil("configs/toy_sd.py", object_name, seed, workdir, flags)
  return (object_name, seed, step, f"{seconds:.0f}", f"{scores['iou']:.3f}",
          f"{scores['mask_iou']:.3f}", f"{scores['psnr']:.1f}")


def main(argv):
  del argv
  from dfjax.eval import ablations  # pylint: disable=g-import-not-at-top
  objects = list(ablations.OBJECT_BY_NAME) if FLAGS.objects == ["all"] else FLAGS.objects
  lines = [f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
           f"{os.cpu_count()} CPUs", "", f"`{' '.join(sys.argv)}`", ""]
  if FLAGS.samples_per_prompt and FLAGS.samples:
    lines += ["| caption | object accuracy of samples |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in sample_scores()] + [""]
  if FLAGS.samples_per_prompt:
    lines += ["| t | relative error of the learned conditional eps (mean over captions) | "
              "range over captions |", "|---|---|---|"]
    lines += [f"| {t} | {mean} | {spread} |" for t, mean, spread in eps_errors()] + [""]
  if objects and FLAGS.seeds:
    lines += ["| object | seed | steps | seconds (command, all in) | mesh IoU | held-out "
              "silhouette IoU | held-out PSNR |", "|---|---|---|---|---|---|---|"]
    for object_name in objects:
      for seed in FLAGS.seeds:
        row = distil(object_name, int(seed))
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
        print(lines[-1], flush=True)
  text = "\n".join(lines) + "\n\n"
  print(text)
  with open(FLAGS.results, "a") as f:
    f.write(text)


if __name__ == "__main__":
  app.run(main)
