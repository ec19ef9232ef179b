"""netc: a declarative neural-network spec compiler (Caffe-style YAML -> JAX)."""

__version__ = "0.1.0"
