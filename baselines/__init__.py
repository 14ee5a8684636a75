"""Baseline networks fed the padded (B, 3, 300, 25, 2) layout: ST-GCN and ST-TR."""
