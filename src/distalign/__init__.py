"""distalign: reward models (scalar and distributional), REINFORCE/RLOO and honest evaluation."""

__version__ = "0.1.0"
