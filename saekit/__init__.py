"""saekit: collect activations, train sparse autoencoders, evaluate and explore them.

from saekit.sae import Sae
sae = Sae.load("runs/demo/topk/final")
code = sae.encode(x)                # raw activations, like sae.reconstruct(x)
"""

__version__ = "0.1.0"
