"""The paper's ablations (arXiv:2209.14988 §4, Fig. 6) with Stable Diffusion, one arm per run.

The same arms as configs/ablations.py (ARMS there), each the full method of
configs/dreamfusion.py with one group of fields changed. For a TPU VM or a GPU:
  python -m dfjax.main --config=configs/ablations_sd.py:no_view_dependence \
      --workdir=runs/sd_no_view_dependence --config.prior.model=PATH_OR_HUB_ID \
      --config.prompt="a DSLR photo of a corgi wearing a top hat"
and score each run with CLIP R-Precision (the paper's measure):
  python -m dfjax.evaluate --workdir=runs/sd_no_view_dependence --clip=DIR_OR_HUB_ID \
      --captions=captions.txt
There is no ground truth here, so the toy banks of configs/ablations.py do not apply; an
",BANK" suffix is refused.
"""
import ml_collections

from configs import ablations
from configs import dreamfusion


def get_config(arg=None) -> ml_collections.ConfigDict:
  arm = (arg or "full").strip()
  if "," in arm:
    raise ValueError(f"configs/ablations_sd.py takes an arm only, got {arm!r}; toy banks belong "
                     "to configs/ablations.py")
  arm, _ = ablations.parse_arm(arm)
  config = dreamfusion.get_config()
  ablations.apply_overrides(config, ablations.ARMS[arm])
  return config
