"""The admin HTTP surface: Prometheus /metrics, /health and a small JSON API."""

from sipushd.admin.api import AdminApi, AdminServer

__all__ = ["AdminApi", "AdminServer"]
