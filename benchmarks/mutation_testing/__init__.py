"""Mutation testing of this project's core modules: a tool for developing uda_perturb, not part of the installed
package (``python benchmarks/mutation.py``)."""
