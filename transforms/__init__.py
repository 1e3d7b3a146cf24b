"""Multi-channel microscopy augmentations and multi-crop (imported as `cellfm.transforms`)."""
