"""Own-model examples: networks nnshrink does not know, trained by their own loop and
compressed through the public API (``nnshrink.compress`` / ``nnshrink.load``)."""
