"""napari plugin for cellfm (imported as `cellfm.plugins.napari`); needs the `napari` extra."""
