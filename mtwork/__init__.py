"""mtwork: multi-task learning with adapters on frozen pretrained backbones, as a reproducible pipeline."""

__version__ = "0.1.0"
