"""Which registry backend a registry URI names: ``open_registry``.

Apart from ``models/registry.py`` (the contract the backends implement) so that the contract
imports no backend and no backend imports this module: the imports point one way.
"""

from __future__ import annotations

from models.registry import Registry, RegistryError


def open_registry(uri: str, read_only: bool = False) -> Registry:
    """A registry backend from its URI: ``sqlite:///path`` or ``sagemaker://group``.

    ``read_only`` is for commands that only read (list, show, serve): the SQLite file is then
    opened without writing anything, so a read-only store still answers."""
    if uri.startswith("sqlite://"):
        from models.registry_sqlite import SQLiteRegistry  # only the backend in use is loaded

        return SQLiteRegistry(uri[len("sqlite://"):], read_only=read_only)
    if uri.startswith("sagemaker://"):
        from models.registry_sagemaker import SageMakerRegistry  # boto3, for AWS only

        return SageMakerRegistry(uri[len("sagemaker://"):])
    raise RegistryError(f"registry URI '{uri}' is not understood; use sqlite:///path/registry.db or sagemaker://<model-package-group>")
