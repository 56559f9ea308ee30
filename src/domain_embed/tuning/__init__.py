"""Fine-tuning: hard-negative mining, triplet datasets, losses and the trainer wrapper.

Modules are imported by path (e.g. `domain_embed.tuning.trainer`) so that using one does not load the others."""
