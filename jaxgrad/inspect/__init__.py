"""Looking at a program: the gradient-flow doctor, optimizer coverage, gradient norms, bit fingerprints, honest timing. Imports jaxgrad.autodiff and jaxgrad.report."""
