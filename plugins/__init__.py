"""Optional integrations (napari)."""
