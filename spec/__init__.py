"""The netc spec language: Caffe's NetParameter written as YAML.

Pure data: pydantic models mirroring caffe.proto's messages, the safe YAML loader that keeps
line:column for every node, and the diagnostics type. Never imports JAX.
"""

from netc.spec.errors import Diagnostic, Diagnostics, SpecError

__all__ = ["Diagnostic", "Diagnostics", "SpecError"]
