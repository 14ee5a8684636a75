"""STAR reproduction suite: sparse spatial and segmented linear temporal attention for skeletons."""

__version__ = "0.1.0"
