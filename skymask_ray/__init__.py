"""skymask-ray: Ray-distributed simulation of Byzantine-robust federated learning around SkyMask."""

__version__ = "0.1.0"
