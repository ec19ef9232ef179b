"""Native kernels called from netc's XLA programs through the XLA FFI (jax.ffi): still one
compiled program per step, as JAX's own LAPACK calls are. Each kernel is optional: when it
cannot be built or loaded, the lowering falls back to its pure-XLA form (same values up to float
rounding). Importing this package does not import JAX."""
