r"""Multi-task fine-tuning: shared encoder + classification, segmentation and detection heads.

Paper scale (default): ResNet-50 at 512 px, global batch 64, Adam 1e-4 (x B/64), 50 epochs, on
synthetic_cxr (4 classes, lung masks, opacity boxes); point `data.name` / `data.sources` at real
datasets (see configs/multichexnet.py and configs/covid_finegrained.py). Start from a
pre-training stage with init_from (the encoder subtree):

  python -m cxr_jax.main --config=configs/multitask.py --workdir=/runs/mt_r50 \
      --config.init_from.workdir=/runs/moco_r50

CPU variant (the MoCo / inpainting :cpu encoder, ResNet-18 at 1/4 width, at 64 px; all three
heads; a few minutes on 2 cores; the README lists the measured Dice / F1 / AUROC / mAP):

  python -m cxr_jax.main --config=configs/multitask.py:cpu --workdir=/tmp/cxr_mt \
      [--config.init_from.workdir=/tmp/cxr_moco]

Linear probe: --config.optim.lr_multipliers="(('^encoder/', 0.0),)"; lower encoder learning
rate: "(('^encoder/', 0.1),)".
"""

from cxr_jax import config_lib


def get_config(arg=None):
  variant, overrides = config_lib.parse_arg(arg, variants=('cpu',))
  c = config_lib.base_config()
  c.method = 'multitask'
  c.global_batch_size = 64
  c.num_epochs = 50
  c.compute_dtype = 'bfloat16'

  c.model = dict(name='resnet', depth=50, width=64, bn_group_size=32, input_norm='per_image')
  c.heads = dict(
      classification=dict(enabled=True, dropout=0.2),
      segmentation=dict(enabled=True, widths=(256, 128, 64, 32)),
      # FCOS on stride 8 and 16. size_bounds: (lo, mid, hi) of the largest point-to-side
      # distance each level takes, () = FCOS's 8 x stride rule (0, 64, inf).
      detection=dict(enabled=True, levels=('stage2', 'stage3'), strides=(8, 16), width=128,
                     depth=2, norm='group', norm_groups=32, size_bounds=(),
                     score_threshold=0.05, max_detections=50, nms_iou=0.5,
                     ap_interpolation='coco101'),
  )
  c.loss = dict(weighting='fixed',      # or 'uncertainty' (Kendall et al. 2018)
                weights=dict(classification=1.0, segmentation=1.0, detection=1.0),
                class_weights=(), focal_gamma=0.0, dice_weight=1.0, bce_weight=1.0,
                positive_only=False)    # MultiCheXNet: seg/det losses on positives only
  # Fine-tuning views: mild crops and intensity jitter; no flips (masks/boxes are not flipped).
  c.aug = dict(image_size_px=512, crop_scale=(0.6, 1.0), brightness=0.2, contrast=0.2,
               gamma=(0.8, 1.25), jitter_prob=0.5, blur_prob=0.0, blur_sigma=(0.1, 1.0),
               hflip_prob=0.0)

  c.optim.name = 'adamw'
  c.optim.base_lr = 1e-4
  c.optim.lr_reference_batch = 64
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_exclude = r'(bias|scale|log_vars)$'
  c.optim.warmup_steps = 200
  c.optim.schedule = 'cosine'

  c.eval.global_batch_size = 64
  c.eval.bootstrap_samples = 1000
  c.eval.knn = dict(k=20, temperature=0.1)
  c.eval_every_steps = 2000
  c.checkpoint.every_steps = 2000

  if variant == 'cpu':
    config_lib.shrink_for_cpu(c)
    c.heads.segmentation.widths = (64, 32, 32, 16)
    c.heads.detection.width = 32
    c.heads.detection.norm_groups = 8
    c.heads.detection.size_bounds = (0.0, 16.0, 1e8)
    c.num_epochs = 8                    # 250 steps
    c.optim.base_lr = 2e-3
    c.optim.warmup_steps = 20
    c.eval.bootstrap_samples = 200
    c.eval_every_steps = 125
    c.checkpoint.every_steps = 125

  config_lib.apply_overrides(c, overrides)
  return c
