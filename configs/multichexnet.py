r"""MultiCheXNet (Abdelrahman et al. 2020): one DenseNet-121 encoder, classification +
segmentation + detection heads, trained on datasets whose labels are disjoint.

Sources (each provides only its own target; the other heads skip its examples through the
`has_*` flags):
  rsna_pneumonia         classification (normal / no lung opacity, not normal / lung opacity)
                         and opacity boxes, half of its draws positive (has a box)
  siim_acr_pneumothorax  pneumothorax masks
Segmentation and detection losses count only positive examples (config.loss.positive_only), as
in the paper. Prepare both datasets first (README, "Using real datasets"):

  python -m cxr_jax.main --config=configs/multichexnet.py --workdir=/runs/multichexnet \
      --config.data.manual_dir=...   # or prepare each dataset with cxr_jax.data.prepare first

The :cpu variant runs the same wiring on synthetic_cxr split into three label-disjoint views
(classification only / masks only / boxes only), with a small DenseNet.
"""

from cxr_jax import config_lib


def get_config(arg=None):
  variant, overrides = config_lib.parse_arg(arg, variants=('cpu',))
  c = config_lib.sibling_config(__file__, 'multitask.py', variant)
  c.model = dict(name='densenet', depth=121, width=64, bn_group_size=32, input_norm='per_image')
  c.loss.positive_only = True
  c.data.sources = (
      dict(name='rsna_pneumonia/512', provides=('label', 'boxes'), weight=1.0,
           balance='positive', positive_fraction=0.5),
      dict(name='siim_acr_pneumothorax/512', provides=('mask',), weight=1.0,
           mask_key='pneumothorax_mask', balance='positive', positive_fraction=0.5),
  )
  c.data.class_names = ('normal', 'no_lung_opacity_not_normal', 'lung_opacity')
  c.data.box_class_names = ('opacity',)
  c.heads.detection.size_bounds = (0.0, 128.0, 1e8)
  if variant == 'cpu':
    c.model.width = 16                # growth 8: a DenseNet-121 layout at 1/4 width
    c.model.bn_group_size = 32
    c.data.sources = (
        dict(name='synthetic_cxr', provides=('label',)),
        dict(name='synthetic_cxr', provides=('mask',)),   # lung masks: every example positive
        dict(name='synthetic_cxr', provides=('boxes',), balance='positive', positive_fraction=0.5),
    )
    c.data.class_names = ()
    c.data.box_class_names = ()
    c.heads.detection.size_bounds = (0.0, 16.0, 1e8)
  config_lib.apply_overrides(c, overrides)
  return c
