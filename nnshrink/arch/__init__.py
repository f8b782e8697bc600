"""Architecture-level compression: profiling and factorisation."""
