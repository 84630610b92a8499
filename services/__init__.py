"""The Ray Serve deployments of the mesh, one per module.

ingest -> features -> model -> policy -> actuation, behind the HTTP ingress.
"""
