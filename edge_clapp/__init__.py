"""edge_clapp: on-device learning with the CLAPP rule (local, contrastive, predictive)."""

__version__ = "0.1.0"
