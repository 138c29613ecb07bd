r"""Fine-grained COVID-19 classification (negative / typical / indeterminate / atypical) on
SIIM-FISABIO-RSNA, multi-task with opacity detection and lung segmentation, from a pre-trained
encoder (the first seed's second stage).

  siim_covid19   study label (4 classes, class-balanced draws) + opacity boxes
  jsrt_scr       lung masks only (a quarter of the draws), so the decoder learns lung fields

Start from a MoCo or inpainting workdir (the encoder subtree is copied, shapes checked):

  python -m cxr_jax.main --config=configs/covid_finegrained.py --workdir=/runs/covid_ft \
      --config.init_from.workdir=/runs/moco_r50

Boxes are scored with the VOC all-points AP at IoU 0.5 (how the challenge describes its mAP).
The :cpu variant wires the same on synthetic_cxr (whose 4 classes stand in for the 4 COVID
appearances).
"""

from cxr_jax import config_lib


def get_config(arg=None):
  variant, overrides = config_lib.parse_arg(arg, variants=('cpu',))
  c = config_lib.sibling_config(__file__, 'multitask.py', variant)
  c.data.sources = (
      dict(name='siim_covid19/512', provides=('label', 'boxes'), weight=3.0, balance='label'),
      dict(name='jsrt_scr/512', provides=('mask',), weight=1.0),
  )
  c.data.class_names = ('negative', 'typical', 'indeterminate', 'atypical')
  c.data.box_class_names = ('opacity',)
  c.heads.detection.ap_interpolation = 'voc_all'
  c.heads.detection.size_bounds = (0.0, 128.0, 1e8)
  c.optim.lr_multipliers = (('^encoder/', 0.1),)   # pre-trained encoder: smaller steps
  if variant == 'cpu':
    c.data.sources = (
        dict(name='synthetic_cxr', provides=('label', 'boxes'), weight=3.0, balance='label'),
        dict(name='synthetic_cxr', provides=('mask',), weight=1.0),
    )
    c.data.class_names = ()
    c.data.box_class_names = ()
    c.heads.detection.size_bounds = (0.0, 16.0, 1e8)
  config_lib.apply_overrides(c, overrides)
  return c
