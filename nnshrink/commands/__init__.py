"""Sub-commands of the ``nnshrink`` CLI: one module each, each with ``register(sub)``."""
