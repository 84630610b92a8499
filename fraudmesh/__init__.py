"""Shared foundations of fraudmesh: settings, the exception tree, the messages that
cross the mesh, currencies and the data-set reader.

The layers live beside this package: ``feature_repo`` (feature definitions),
``models`` (the sequence model), ``services`` (one Ray Serve deployment per module)
and ``orchestration`` (graph building, CLI, jobs and replay).
"""

__version__ = "0.1.0"
