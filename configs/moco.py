r"""MoCo v2 pre-training on chest X-rays (He et al. 2020, Chen et al. 2020; MoCo-CXR settings).

Paper scale (default): ResNet-50, 224 px, global batch 256, 200 epochs, queue 65,536, tau 0.2,
m 0.999, SGD lr 0.03 x B/256, momentum 0.9, wd 1e-4, cosine. Point `data.name` at a real dataset
(see the README's "Using real datasets") or keep the embedded synthetic one:

  python -m cxr_jax.main --config=configs/moco.py --workdir=/runs/moco_r50 \
      --config.data.name=synthetic_cxr

CPU variant (ResNet-18 at 1/4 width, 64 px, a few minutes on 2 cores, synthetic_cxr generated on
first use; see the README for the measured time and kNN accuracy):

  python -m cxr_jax.main --config=configs/moco.py:cpu --workdir=/tmp/cxr_moco

The encoder this stage learns is `params/encoder/...` in the checkpoint; later stages take it with
`--config.init_from.workdir=/runs/moco_r50`.
"""

from cxr_jax import config_lib


def get_config(arg=None):
  variant, overrides = config_lib.parse_arg(arg, variants=('cpu',))
  c = config_lib.base_config()
  c.method = 'moco'
  c.global_batch_size = 256
  c.num_epochs = 200
  c.compute_dtype = 'bfloat16'

  c.model = dict(name='resnet', depth=50, width=64,
                 bn_group_size=32,      # per-GPU BN of the reference (8 x 32), device-independent
                 input_norm='per_image')  # or 'fixed': (x - 0.5) / 0.25

  c.moco = dict(dim=128, hidden_dim=2048, queue_size=65536, temperature=0.2, momentum=0.999,
                momentum_cosine=False, shuffle_bn=True)

  # X-ray views: no hue/saturation (grey), no flip by default (laterality is anatomy).
  c.aug = dict(image_size_px=224, crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4,
               gamma=(0.7, 1.4), jitter_prob=0.8, blur_prob=0.5, blur_sigma=(0.1, 2.0),
               hflip_prob=0.0)

  c.optim.name = 'sgd'
  c.optim.base_lr = 0.03
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'cosine'

  c.eval.global_batch_size = 256
  c.eval.knn = dict(k=200, temperature=0.1)
  c.eval_every_steps = 5000
  c.checkpoint.every_steps = 2000

  if variant == 'cpu':
    config_lib.shrink_for_cpu(c)
    c.moco.hidden_dim = 512
    # 2,000 near-identical synthetic patients: a short queue (4 batches) of recent keys keeps the
    # instance task learnable in a few hundred steps (1,024 plateaued near chance, see README).
    c.moco.queue_size = 256
    c.moco.momentum = 0.99            # a short run needs a faster-moving key encoder
    # At 64 px a blur of sigma up to 2 px wipes out the fine diffuse-disease texture and a 20 %
    # crop often misses the lesions: without blur and with crops of 50-100 % of the image the
    # kNN probe rises from 48.0 % to 61.4 % (MoCo-CXR also leaves out blur and random crops).
    c.aug.blur_prob = 0.0
    c.aug.crop_scale = (0.5, 1.0)
    c.num_epochs = 15                 # 468 steps
    c.optim.base_lr = 0.48            # x 64/256 = 0.12
    c.optim.warmup_steps = 20
    c.eval_every_steps = 200
    c.checkpoint.every_steps = 100

  config_lib.apply_overrides(c, overrides)
  return c
