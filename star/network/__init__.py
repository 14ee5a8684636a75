"""The STAR model: one module per idea, assembled in star.network.star."""

from star.network.star import STAR, STAR_RECIPES, STARConfig

__all__ = ["STAR", "STAR_RECIPES", "STARConfig"]
