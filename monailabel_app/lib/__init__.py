"""The MONAI Label side of the GL-MAE bundles: which bundle folders are served, and their infer and train tasks."""
