"""The sweep layer: checkpoints over a grid of missing settings, grouped, tabled and plotted."""
