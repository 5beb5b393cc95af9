"""ASAG: Adversarial Sinkhorn Attention Guidance for Stable Diffusion WebUI hosts.

The core modules (sinkhorn, guidance, layers, params, attention) import only torch, einops and the
standard library; host adapters live under `asag_lib.hosts` and import host modules lazily.
"""

__version__ = "0.1.0"
