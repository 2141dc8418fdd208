"""Reproduce the paper's ablations (arXiv:2209.14988 §4, Fig. 6) on the toy world.

Every arm of configs/ablations.py is trained with the closed-form prior on toy objects with a
distinct front, over several seeds, and scored against the object's known shape and colours
(dfjax.eval.ablation_metrics). Writes experiments/results/ablations.md (one row per arm and metric,
mean ± standard deviation over seeds, the paper's expectation and whether the toy world shows
it) and turntable figures in experiments/results/ablations/ (or under --results_dir).

  python experiments/run_ablations.py --quick   # pipeline check: 10 runs of 30 steps, 1 seed
  python experiments/run_ablations.py           # the committed study: every arm x 2 seeds
                                                # on the yellow duck (26 runs of 800 steps)
  python experiments/run_ablations.py --objects=yellow_duck,house --seeds=3   # larger
  python experiments/run_ablations.py --arms=no_view_dependence --steps=600 \
      --results_dir=runs/janus_600                                            # smaller
Each run trains for configs/toy.py's step count unless --steps is given; a run costs about as
much as the toy quick start (README), so size the study with --arms, --seeds and --steps.
--table_only rewrites the table and figures from the runs finished so far.

  python experiments/run_ablations.py --prior=toy_sd   # the same studies with the toy SD
runs every study with the shipped toy Stable Diffusion as the prior (configs/toy_sd.py, 1500
steps a run; the bank "toy_sd" of configs/ablations.py) instead of a closed-form bank, into
experiments/results/ablations_toy_sd.md and ablations_toy_sd/ (runs in runs/ablations_toy_sd).
The two lighting studies, which differ only in their bank, become one. Its table ends with
each arm's verdict beside the closed-form study's (ablations.md in the same results folder).

Each run lives in its own workdir under --runs_dir with its scores in scores.json; finished
runs are reused and interrupted ones resume from their last checkpoint, so the script can be
restarted at any time.

The study's logic lives in `dfjax.eval.ablations`; this script is its command line.
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import ablations as ablation_configs  # pylint: disable=g-import-not-at-top
from dfjax import cli  # pylint: disable=g-import-not-at-top
from dfjax.eval import ablations as study  # pylint: disable=g-import-not-at-top


RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# --prior -> the name of its results (ablations.md, ablations/) and default runs folder.
PRIORS = {"closed_form": "ablations", "toy_sd": "ablations_toy_sd"}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prior", default="closed_form", choices=PRIORS,
                      help="the studies' prior: each study's closed-form toy bank, or the "
                      "shipped toy Stable Diffusion")
  parser.add_argument("--quick", action="store_true",
                      help="1 object, 1 seed, few steps; results go under --runs_dir only")
  parser.add_argument("--runs_dir", default=None, help="workdirs of the runs "
                      "(default runs/ablations, or runs/ablations_quick with --quick)")
  parser.add_argument("--results_dir", default=None, help="where ablations.md and its figures "
                      "(ablations/*.png) go (default experiments/results, the committed study; "
                      "--runs_dir with --quick)")
  parser.add_argument("--objects", default=None, help="comma-separated toy objects for every "
                      "study, from: " + ", ".join(study.OBJECT_BY_NAME) + " (default: each "
                      "study's own, the yellow duck)")
  parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
  parser.add_argument("--arms", default=None, help="comma-separated arms to run (default: all "
                      "of configs/ablations.py's; a study keeps its full method)")
  parser.add_argument("--banks", default=None, help="comma-separated: only the studies on "
                      "these toy banks (" + ", ".join(ablation_configs.BANKS) + ")")
  parser.add_argument("--table_only", action="store_true",
                      help="write the table and figures from the finished runs only")
  parser.add_argument("--rescore", action="store_true",
                      help="score finished runs again from their checkpoints (new metrics)")
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps per run (default: configs/toy.py's)")
  return parser.parse_args(argv)


def names(text, known, what):
  """Comma-separated names, each checked against `known` (a one-line exit otherwise)."""
  chosen = [name for name in text.split(",") if name]
  unknown = [name for name in chosen if name not in known]
  if unknown:
    sys.exit(f"error: unknown {what} {unknown[0]!r}; choose from {', '.join(known)}")
  return chosen


def select_studies(args):
  """study.STUDIES narrowed by --quick, --arms, --banks and --objects."""
  # --quick: each study's full method and its first ablated arm only.
  studies = study.STUDIES
  if args.quick:
    studies = [dataclasses.replace(s, arms=s.arms[:2]) for s in studies]
  if args.arms:
    chosen = set(names(args.arms, ablation_configs.ARMS, "arm"))
    studies = [dataclasses.replace(s, arms=tuple(a for a in s.arms
                                                 if a in chosen or a == s.reference))
               for s in studies]
    studies = [s for s in studies if len(s.arms) > 1]
  if args.banks:
    if args.prior != "closed_form":
      sys.exit(f"error: --banks chooses closed-form banks; --prior={args.prior} has its own")
    banks = names(args.banks, ablation_configs.BANKS, "bank")
    studies = [s for s in studies if s.bank in banks]
  if args.prior == "toy_sd":  # one bank for every study: studies that differed by it merge
    merged = []
    for s in studies:
      if not any(s.arms == kept.arms for kept in merged):
        merged.append(dataclasses.replace(s, bank="toy_sd", toy_world=""))
    studies = merged
  if args.objects:
    objects = tuple(names(args.objects, study.OBJECT_BY_NAME, "object"))
    studies = [dataclasses.replace(s, objects=objects) for s in studies]
  return studies


def comparison(args, studies, results, seeds, results_dir):
  """With --prior=toy_sd, the section setting each verdict beside the closed-form study's
  (PRIORS["closed_form"].md in the same results folder, when it is there)."""
  closed_form = os.path.join(results_dir, PRIORS["closed_form"] + ".md")
  if args.prior == "closed_form" or not os.path.isfile(closed_form):
    return ()
  with open(closed_form, encoding="utf-8") as f:
    return study.comparison_section(studies, results, seeds, other_text=f.read(),
                                    other_name="closed-form prior", this_name="toy SD")


def main(argv):
  args = parse_args(argv)
  for flag in ("seeds", "steps"):
    if getattr(args, flag) is not None and getattr(args, flag) < 1:
      sys.exit(f"error: --{flag} must be at least 1, got {getattr(args, flag)}")
  seeds = list(range(args.seeds or (1 if args.quick else 2)))
  steps = args.steps or (30 if args.quick else None)
  name = PRIORS[args.prior]
  runs_dir = args.runs_dir or (f"runs/{name}_quick" if args.quick else f"runs/{name}")
  results_dir = args.results_dir or (runs_dir if args.quick else RESULTS)
  out_md = os.path.join(results_dir, f"{name}.md")
  out_figures = os.path.join(results_dir, name)
  studies = select_studies(args)
  runs = study.plan(studies, seeds)
  print(f"{len(runs)} runs in {runs_dir}", flush=True)
  start = time.time()
  try:
    with cli.user_errors():  # e.g. an interrupted run's workdir holds another config
      results = study.run_study(runs, runs_dir, steps=steps, rescore=args.rescore,
                                table_only=args.table_only,
                                log=lambda line: print(line, flush=True))
  except study.StudyInterrupted as stopped:
    sys.exit(str(stopped))
  if not results:
    sys.exit(f"error: no finished run in {runs_dir}")
  command = "python experiments/run_ablations.py " + " ".join(
      a for a in argv if a not in ("--table_only", "--rescore"))
  study.write_table(out_md, results, studies=studies, seeds=seeds,
              steps=", ".join(map(str, sorted({r["steps"] for r in results.values()}))),
              command=command.strip(), timings=study.timing_note(results, runs),
              extra=comparison(args, studies, results, seeds, results_dir))
  study.write_figures(out_figures, runs_dir, studies=studies, seed=seeds[0], results=results)
  print(f"wrote {out_md} and {out_figures}/ in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
