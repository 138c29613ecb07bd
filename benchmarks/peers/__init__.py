"""Peer implementations (other frameworks) measured against cxr_jax; see moco_torch.py."""
