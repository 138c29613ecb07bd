r"""PyTorch MoCo v2 peer of `benchmarks/train_step.py`: the same training step, steady-state img/s.

Install (a separate venv; see requirements.txt beside this file) and run from the repository root:

  python3 -m venv /work/venv-torch
  /work/venv-torch/bin/pip install -r benchmarks/peers/requirements.txt
  /work/venv-torch/bin/python -m benchmarks.peers.moco_torch --depth=18 --width=16 \
      --image_size=64 --batch=64 --queue_size=256 --hidden_dim=512 --dtype=float32  # CPU, tiny
  /work/venv-torch/bin/python -m benchmarks.peers.moco_torch                     # paper scale, GPU

Defaults are configs/moco.py at paper scale: ResNet-50 (width 64, 1-channel stem, torchvision's
v1.5 bottlenecks, zero-initialised last BN scale per block), 2-layer MLP projector 2048 -> 2048 ->
128 without BN, queue 65,536, tau 0.2, key-encoder momentum 0.999, SGD momentum 0.9 with weight
decay 1e-4, 224 px views, batch 256, bfloat16 autocast, channels_last, torch.compile (on CUDA;
`--compile=on|off` to choose).
`benchmarks/compare_moco_peer.py` passes the values of the JAX config instead.

One step is what the JAX step does (cxr_jax/methods/moco.py):
  * device photometric augmentation of both uint8 views from per-view parameter vectors (flip,
    brightness, contrast, clip, gamma, separable per-example Gaussian blur of radius
    ceil(3 * max sigma) with reflect borders, clip), then per-image standardisation;
  * key encoder <- EMA of the query encoder (before it encodes the keys); shuffle-BN on one
    device: the key batch is permuted, encoded, and un-permuted;
  * BatchNorm over groups of `--bn_group_size` consecutive examples (the JAX model's
    GroupBatchNorm, statistics in float32); `--bn=torch` uses nn.BatchNorm2d over the whole
    batch instead (cuDNN's fused kernel; not the same normalisation, offered as a faster peer);
  * InfoNCE over [positive | queue] in float32, backward, SGD, enqueue.
Not done here (the JAX step does them, all tiny): the cosine learning-rate schedule (constant
here) and the gradient / parameter norms it logs.

Input: one batch of synthetic pre-made crops (uint8 [B, 2, S, S]) and parameter vectors, on the
device before timing, as in the JAX benchmark, so only the training step is measured. Timing:
`--warmup` steps (the first includes torch.compile; its time is reported), then `--steps` steps
in windows of `--window`, each closed by a device synchronisation; median per-step time.
Output: a table, then one JSON line (last line of stdout).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

STAGES = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
          50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3))}


class GroupBatchNorm(nn.Module):
  """BatchNorm over groups of `group_size` consecutive examples, statistics in float32 (as
  cxr_jax.models.layers.GroupBatchNorm); running statistics of the whole batch."""

  def __init__(self, channels: int, group_size: int, zero_init: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    super().__init__()
    self.group_size, self.momentum, self.eps = group_size, momentum, eps
    self.weight = nn.Parameter(torch.zeros(channels) if zero_init else torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.register_buffer('running_mean', torch.zeros(channels))
    self.register_buffer('running_var', torch.ones(channels))

  def forward(self, x):
    if not self.training:
      return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False,
                          0.0, self.eps)
    b, c = x.shape[:2]
    g = b if not self.group_size or self.group_size >= b else self.group_size
    xf = x.float().view(b // g, g, c, *x.shape[2:])
    dims = (1, 3, 4)
    mean = xf.mean(dims, keepdim=True)
    sq = xf.square().mean(dims, keepdim=True)
    var = (sq - mean.square()).clamp_min(0.0)
    y = ((xf - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
    y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
    with torch.no_grad():
      batch_mean = mean.mean(0).flatten()
      count = xf.numel() // c
      batch_var = (sq.mean(0).flatten() - batch_mean.square()).clamp_min(0.0) * count / max(
          count - 1, 1)
      self.running_mean.lerp_(batch_mean, self.momentum)
      self.running_var.lerp_(batch_var, self.momentum)
    return y.to(x.dtype)


def make_bn(kind: str, group_size: int):
  def bn(channels, zero_init=False):
    if kind == 'torch':
      layer = nn.BatchNorm2d(channels)
      if zero_init:
        nn.init.zeros_(layer.weight)
      return layer
    return GroupBatchNorm(channels, group_size, zero_init)
  return bn


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, ch, stride, bn):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, ch, 3, stride, 1, bias=False)
    self.bn1 = bn(ch)
    self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
    self.bn2 = bn(ch, zero_init=True)
    self.shortcut = None
    if stride != 1 or cin != ch:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, ch, 1, stride, bias=False), bn(ch))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, ch, stride, bn):
    super().__init__()
    out = ch * 4
    self.conv1 = nn.Conv2d(cin, ch, 1, bias=False)
    self.bn1 = bn(ch)
    self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
    self.bn2 = bn(ch)
    self.conv3 = nn.Conv2d(ch, out, 1, bias=False)
    self.bn3 = bn(out, zero_init=True)
    self.shortcut = None
    if stride != 1 or cin != out:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), bn(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
  """cxr_jax.models.resnet.ResNet in torch: 1-channel stem, `width` scaling, pooled output."""

  def __init__(self, depth, width, bn):
    super().__init__()
    kind, counts = STAGES[depth]
    block = BasicBlock if kind == 'basic' else Bottleneck
    self.stem = nn.Sequential(nn.Conv2d(1, width, 7, 2, 3, bias=False), bn(width), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1))
    layers, cin = [], width
    for s, n in enumerate(counts):
      ch = width * 2 ** s
      for b in range(n):
        layers.append(block(cin, ch, 2 if (b == 0 and s > 0) else 1, bn))
        cin = ch * block.expansion
    self.blocks = nn.Sequential(*layers)
    self.num_features = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    return self.blocks(self.stem(x)).float().mean((2, 3))


class MoCoNet(nn.Module):
  def __init__(self, depth, width, hidden_dim, dim, bn):
    super().__init__()
    self.encoder = ResNet(depth, width, bn)
    self.projector = nn.Sequential(nn.Linear(self.encoder.num_features, hidden_dim), nn.ReLU(),
                                   nn.Linear(hidden_dim, dim))

  def forward(self, x):
    return F.normalize(self.projector(self.encoder(x)).float(), dim=1)


def gaussian_kernels(sigma, radius):
  taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
  g = torch.exp(-0.5 * (taps / sigma.clamp_min(1e-3)[:, None]).square())
  g = g / g.sum(-1, keepdim=True)
  delta = (taps == 0).float()
  return torch.where(sigma[:, None] > 0, g, delta[None])


def photometric(views_u8, params, radius: int, channels_last: bool, per_image: bool = True):
  """uint8 [B, H, W] + params [B, 5] -> standardised float32 [B, 1, H, W] (cxr_jax augment)."""
  x = views_u8.float() / 255.0
  b = x.shape[0]
  x = torch.where(params[:, 4, None, None] > 0.5, x.flip(-1), x)
  x = x * params[:, 0, None, None]
  mean = x.mean((1, 2), keepdim=True)
  x = ((x - mean) * params[:, 1, None, None] + mean).clamp(0.0, 1.0)
  x = x.pow(params[:, 2, None, None])
  if radius > 0:
    k = gaussian_kernels(params[:, 3], radius)                      # [B, 2r+1]
    y = F.pad(x[None], (0, 0, radius, radius), mode='reflect')      # [1, B, H+2r, W]
    y = F.conv2d(y, k[:, None, :, None], groups=b)
    y = F.pad(y, (radius, radius, 0, 0), mode='reflect')
    x = F.conv2d(y, k[:, None, None, :], groups=b)[0]
  x = x.clamp(0.0, 1.0)[:, None]
  if per_image:
    m = x.mean((1, 2, 3), keepdim=True)
    s = x.std((1, 2, 3), keepdim=True, unbiased=False)
    x = (x - m) / (s + 1e-3)
  else:
    x = (x - 0.5) / 0.25
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def synthetic_batch(batch, size, device, seed=0):
  """Pre-made uint8 crops [B, 2, S, S] and per-view parameters [B, 2, 5] drawn like
  cxr_jax.data.augment.sample_photometric_params with the configs/moco.py ranges."""
  g = torch.Generator().manual_seed(seed)
  views = torch.randint(0, 256, (batch, 2, size, size), dtype=torch.uint8, generator=g)
  u = torch.rand(batch, 2, 7, generator=g)
  jitter = u[..., 0] < 0.8
  params = torch.zeros(batch, 2, 5)
  params[..., 0] = torch.where(jitter, 0.6 + 0.8 * u[..., 1], torch.ones(()))
  params[..., 1] = torch.where(jitter, 0.6 + 0.8 * u[..., 2], torch.ones(()))
  lo, hi = math.log(0.7), math.log(1.4)
  params[..., 2] = torch.where(jitter, torch.exp(lo + (hi - lo) * u[..., 3]), torch.ones(()))
  params[..., 3] = torch.where(u[..., 4] < 0.5, 0.1 + 1.9 * u[..., 5], torch.zeros(()))
  return views.to(device), params.to(device)


class MoCoStep:
  """State and one training step of MoCo v2 (query/key encoders, queue, SGD)."""

  def __init__(self, args, device):
    bn = make_bn(args.bn, args.bn_group_size)
    self.model = MoCoNet(args.depth, args.width, args.hidden_dim, args.dim, bn).to(device)
    self.key_model = copy.deepcopy(self.model)
    for p in self.key_model.parameters():
      p.requires_grad_(False)
    if args.channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
      self.key_model = self.key_model.to(memory_format=torch.channels_last)
    self.params = list(self.model.parameters())
    self.key_params = list(self.key_model.parameters())
    queue = F.normalize(torch.randn(args.queue_size, args.dim, device=device), dim=1)
    self.queue, self.ptr = queue, 0
    fused = device.type == 'cuda' if args.fused_sgd == 'auto' else args.fused_sgd == 'yes'
    self.opt = torch.optim.SGD(self.params, lr=args.lr, momentum=args.sgd_momentum,
                               weight_decay=args.weight_decay,
                               **({'fused': True} if fused else {'foreach': True}))
    self.args, self.device = args, device
    self.radius = int(math.ceil(3.0 * args.max_blur_sigma))
    self.autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                                   enabled=args.dtype == 'bfloat16')
    q_fn, k_fn, aug = self.model, self.key_model, photometric
    if args.compile:
      q_fn = torch.compile(self.model, mode=args.compile_mode)
      k_fn = torch.compile(self.key_model, mode=args.compile_mode)
      aug = torch.compile(photometric, mode=args.compile_mode)
    self.q_fn, self.k_fn, self.aug = q_fn, k_fn, aug

  def __call__(self, views, params):
    args = self.args
    per_image = args.input_norm == 'per_image'
    x_q = self.aug(views[:, 0], params[:, 0], self.radius, args.channels_last, per_image)
    x_k = self.aug(views[:, 1], params[:, 1], self.radius, args.channels_last, per_image)
    with torch.no_grad():
      # pylint: disable-next=protected-access
      torch._foreach_lerp_(self.key_params, self.params, 1.0 - args.momentum)
      perm = torch.randperm(x_k.shape[0], device=self.device)
      with self.autocast:
        k_shuffled = self.k_fn(x_k[perm])
      k = torch.empty_like(k_shuffled)
      k[perm] = k_shuffled
    with self.autocast:
      q = self.q_fn(x_q)
    l_pos = (q * k).sum(1, keepdim=True)
    l_neg = q @ self.queue.T
    logits = torch.cat([l_pos, l_neg], 1) / args.temperature
    loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=self.device))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      b = k.shape[0]
      self.queue[self.ptr:self.ptr + b] = k
      self.ptr = (self.ptr + b) % self.queue.shape[0]
    return loss


def sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--depth', type=int, default=50, choices=sorted(STAGES))
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--hidden_dim', type=int, default=2048)
  p.add_argument('--queue_size', type=int, default=65536)
  p.add_argument('--temperature', type=float, default=0.2)
  p.add_argument('--momentum', type=float, default=0.999, help='key encoder EMA')
  p.add_argument('--bn', choices=('group', 'torch'), default='group')
  p.add_argument('--bn_group_size', type=int, default=32, help='0: whole batch')
  p.add_argument('--lr', type=float, default=0.03)
  p.add_argument('--sgd_momentum', type=float, default=0.9)
  p.add_argument('--weight_decay', type=float, default=1e-4)
  p.add_argument('--fused_sgd', choices=('auto', 'yes', 'no'), default='auto')
  p.add_argument('--max_blur_sigma', type=float, default=2.0)
  p.add_argument('--input_norm', choices=('per_image', 'fixed'), default='per_image')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='bfloat16')
  p.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True)
  p.add_argument('--compile', choices=('auto', 'on', 'off'), default='auto',
                 help='torch.compile the encoders and the augmentation; auto: on for CUDA, off on '
                 'CPU (inductor C++ compilation of the CPU graphs takes minutes on small hosts)')
  p.add_argument('--compile_mode', default=None, help='torch.compile mode (default: default)')
  p.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
  p.add_argument('--threads', type=int, default=0, help='CPU threads (0: all cores)')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--window', type=int, default=1)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json_out', default='')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.device == 'auto':
    args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
  device = torch.device(args.device)
  args.compile = args.compile == 'on' or (args.compile == 'auto' and device.type == 'cuda')
  torch.set_num_threads(args.threads or common.host_cores())
  torch.manual_seed(args.seed)
  if device.type == 'cuda':
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True   # as XLA's DEFAULT precision for float32
    torch.backends.cudnn.allow_tf32 = True
    torch.cuda.reset_peak_memory_stats(device)
  if args.queue_size % args.batch:
    sys.exit(f'error: --queue_size={args.queue_size} must be a multiple of --batch={args.batch}')
  step = MoCoStep(args, device)
  views, params = synthetic_batch(args.batch, args.image_size, device, args.seed)
  sync(device)

  t0 = time.perf_counter()
  loss = step(views, params)
  sync(device)
  first_step = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    loss = step(views, params)
  sync(device)
  window = max(1, args.window)
  per_step = []
  for _ in range(max(1, args.steps // window)):
    t0 = time.perf_counter()
    for _ in range(window):
      loss = step(views, params)
    sync(device)
    per_step.append((time.perf_counter() - t0) / window)
  step_time = statistics.median(per_step)

  if device.type == 'cuda':
    kind = torch.cuda.get_device_name(device)
    peak_bytes = int(torch.cuda.max_memory_allocated(device))
  else:
    kind, peak_bytes = f'cpu {common.host_cores()} cores', None
  record = {
      **common.base_record('moco_torch'), 'device': kind, 'platform': device.type,
      'torch': torch.__version__, 'python': platform.python_version(),
      'model': f'resnet{args.depth}/w{args.width}', 'image_size_px': args.image_size,
      'global_batch': args.batch, 'per_device_batch': args.batch, 'dtype': args.dtype,
      'bn': args.bn, 'bn_group_size': args.bn_group_size, 'channels_last': args.channels_last,
      'compile': args.compile, 'compile_mode': args.compile_mode, 'queue_size': args.queue_size,
      'hidden_dim': args.hidden_dim, 'dim': args.dim, 'threads': torch.get_num_threads(),
      'first_step_s': first_step, 'steps_timed': len(per_step) * window, 'window': window,
      'step_time_ms': step_time * 1e3, 'step_time_min_ms': min(per_step) * 1e3,
      'images_per_s': args.batch / step_time, 'peak_memory_bytes': peak_bytes,
      'final_loss': float(loss.detach()),
  }
  common.print_table(f'moco_torch: {record["model"]}, {args.image_size} px, batch {args.batch}', [
      ('device', kind), ('torch', torch.__version__),
      ('dtype / channels_last / compile', f'{args.dtype} / {args.channels_last} / {args.compile}'),
      ('BN', f'{args.bn} (group {args.bn_group_size})'),
      ('first step s (incl. compile)', first_step),
      ('step time ms (median, min)', f'{step_time * 1e3:.2f}, {min(per_step) * 1e3:.2f} over '
                                     f'{record["steps_timed"]} steps'),
      ('images/s', record['images_per_s']),
      ('peak memory GiB', None if peak_bytes is None else peak_bytes / 2**30),
      ('loss after the timed steps', record['final_loss'])])
  common.emit_json(record, args.json_out)


if __name__ == '__main__':
  main()
