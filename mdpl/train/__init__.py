"""The training layer: settings (the one configuration boundary), the Lightning task module and datamodule, the
trainer, exact resume and the one evaluation path (`run.main` is what `python run.py with ...` does). It imports
nothing of mdpl.sweep."""
