"""The paper's ablations (arXiv:2209.14988 §4, Fig. 6) on the toy world, one arm per run.

Run one arm:
  python -m dfjax.main --config=configs/ablations.py:no_view_dependence --workdir=runs/janus
  python -m dfjax.main --config=configs/ablations.py:full,front_biased --workdir=runs/janus_full
The argument is ARM or ARM,BANK. Every arm is the full method (configs/toy.py) with ONE group
of fields changed (ARMS below), trained on a toy bank (BANKS below) that makes the ablated
component matter: view-dependent prompts matter when most photos show the front, lighting
matters when the photos are shaded. Without ",BANK" an arm uses its study's bank
(DEFAULT_BANK). The whole study, with metrics against the toy world's ground truth:
  python experiments/run_ablations.py [--quick]

The "bank" toy_sd is the shipped toy Stable Diffusion instead of a closed-form bank prior:
its arms are configs/toy_sd.py at the paper's guidance 100 and 1500 steps (lit and textureless
views as the paper) with the same groups of fields changed, e.g.
  python -m dfjax.main --config=configs/ablations.py:no_lighting,toy_sd --workdir=runs/sd_nl
  python experiments/run_ablations.py --prior=toy_sd
"""
import ml_collections

from configs import toy
from configs import toy_sd

# Field overrides of each arm; "full" changes nothing.
ARMS = {
    "full": {},
    # §3.2: the prompt no longer says "front view" / "back view" / ...
    "no_view_dependence": {"prior.view_dependent": False},
    # §3.1: albedo only throughout (no lit views, hence no textureless views either).
    "no_lighting": {"shading.shaded_prob": 0.0},
    # §3.1: lit views keep their albedo.
    "no_textureless": {"shading.textureless_prob": 0.0},
    # App. A.2: no orientation loss and no opacity penalty.
    "no_regularisers": {"loss.orientation_weight": 0.0, "loss.orientation_weight_start": 0.0,
                        "loss.opacity_weight": 0.0},
    # Classifier-free guidance scale s; the paper uses s = 100 (§3), configs/toy.py its own.
    "guidance_1": {"prior.guidance_scale": 1.0},
    "guidance_7.5": {"prior.guidance_scale": 7.5},
    "guidance_30": {"prior.guidance_scale": 30.0},
    "guidance_100": {"prior.guidance_scale": 100.0},
}

# Toy banks (fields of config.toy): "uniform" is configs/toy.py's own.
BANKS = {
    "uniform": {},
    "front_biased": {"toy.front_biased": True},  # most views from the front (Janus study)
    # Shaded photos (lighting studies), with the paper's lit and textureless views to match:
    # the full method on an albedo bank (configs/toy.py) renders albedo only. The albedo-only
    # warm-up is cut from 300 to 100 steps so that a short study run is mostly lit (the paper
    # warms up for 1000 of 15000 steps).
    "lambertian": {"toy.shading": "lambertian", "shading.shaded_prob": 0.75,
                   "shading.albedo_warmup_steps": 100},
    # The same with every other photo untextured (lit white), so that the trainer's
    # textureless views have neighbours in the bank, as they would in a photo prior.
    "lambertian_textureless": {"toy.shading": "lambertian_textureless",
                               "shading.shaded_prob": 0.75, "shading.albedo_warmup_steps": 100},
    # The learned prior: configs/toy_sd.py (see LEARNED_PRIOR_BANKS) at the paper's guidance
    # 100, the reference of every arm as in the paper, and 1500 steps, the length the study
    # was run at (configs/toy_sd.py itself now guides at 10 for 3000 steps). The toy SD was
    # trained on every toy object in the three shadings from cameras all round.
    "toy_sd": {"prior.guidance_scale": 100.0, "train.steps": 1500},
}

# Banks whose arms start from configs/toy_sd.py (the toy Stable Diffusion) instead of
# configs/toy.py (a closed-form bank prior).
LEARNED_PRIOR_BANKS = ("toy_sd",)

# Fields every arm takes from the paper where configs/toy.py departs from it for speed: the
# orientation loss in every view, as the recorded studies ran (configs/toy.py drops it in
# albedo-only views).
PAPER_FIELDS = {"loss.orientation_in_albedo_views": True}

DEFAULT_BANK = {"no_view_dependence": "front_biased", "no_lighting": "lambertian",
                "no_textureless": "lambertian"}


def parse_arm(arg) -> tuple[str, str]:
  """"ARM" or "ARM,BANK" -> (arm, bank); unknown names raise a one-line ValueError."""
  arm, _, bank = (arg or "full").partition(",")
  arm, bank = arm.strip(), bank.strip() or DEFAULT_BANK.get(arm.strip(), "uniform")
  if arm not in ARMS:
    raise ValueError(f"unknown ablation arm {arm!r}; choose one of {', '.join(ARMS)} "
                     "(e.g. --config=configs/ablations.py:no_view_dependence)")
  if bank not in BANKS:
    raise ValueError(f"unknown toy bank {bank!r}; choose one of {', '.join(BANKS)} "
                     "(e.g. --config=configs/ablations.py:full,front_biased)")
  return arm, bank


def overrides(arm: str, bank: str) -> dict:
  """The dotted fields (and values) in which the arm on the bank differs from its base config
  (configs/toy.py, or configs/toy_sd.py for LEARNED_PRIOR_BANKS)."""
  return {**BANKS[bank], **ARMS[arm]}


def apply_overrides(config: ml_collections.ConfigDict, fields: dict) -> None:
  for name, value in fields.items():
    section, key = name.split(".")
    config[section][key] = value


def get_config(arg=None) -> ml_collections.ConfigDict:
  arm, bank = parse_arm(arg)
  config = toy_sd.get_config() if bank in LEARNED_PRIOR_BANKS else toy.get_config()
  apply_overrides(config, dict(PAPER_FIELDS, **overrides(arm, bank)))
  return config
