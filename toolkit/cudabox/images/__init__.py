"""Everything about the images cudabox ships: catalog, locks, base, render, build, verify, diff."""
