"""The STAR model: one module per idea, assembled in star.model.star."""

from star.model.star import STAR, STAR_RECIPES, STARConfig

__all__ = ["STAR", "STAR_RECIPES", "STARConfig"]
