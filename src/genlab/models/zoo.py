"""Registrations of the model zoo (convolutional VAEs and GANs, conditional models, hybrids)."""
