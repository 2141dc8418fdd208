"""Evaluation against known answers and the paper's numbers.

metrics (IoU, PSNR, normals, floaters) -> ablation_metrics (Janus, baked shading, ...) ->
ablations (the study of Fig. 6 on the toy world); clip_eval (CLIP R-Precision, Table 1).
"""
