"""Wire layer: framing, envelopes, errors, events. Knows nothing about diffusion."""
