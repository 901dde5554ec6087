"""Sub-commands of the `scfdata` CLI: one module each, thin wrappers over the package."""
