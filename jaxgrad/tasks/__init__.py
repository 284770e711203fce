"""One module per training task (classifier, CLIP, PINN): its loss_fn, optimizer and evaluation, on top of jaxgrad.training and jaxgrad.models."""
