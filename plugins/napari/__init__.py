"""napari plugin for cellfm (imported as `cellfm.plugins.napari`); needs the `napari` extra.

Widgets are thin views over `cellfm.segment`; npe2 imports them lazily from `napari.yaml`.
"""

__all__: list[str] = []
