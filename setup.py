"""Package discovery for the top-level folders that install inside the ``cellfm`` namespace.

``transforms/``, ``configs/`` and ``plugins/`` live beside ``cellfm/`` (the design card asks for
them at the top level) and import as ``cellfm.transforms``, ``cellfm.configs`` and
``cellfm.plugins``. Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

MAPPED = {"transforms": "cellfm.transforms", "configs": "cellfm.configs", "plugins": "cellfm.plugins"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = find_packages(include=["cellfm", "cellfm.*"])
    package_dir = {"cellfm": "cellfm"}
    for folder, name in MAPPED.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(where=folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages, package_dir


_PACKAGES, _PACKAGE_DIR = _packages()
setup(packages=_PACKAGES, package_dir=_PACKAGE_DIR)
