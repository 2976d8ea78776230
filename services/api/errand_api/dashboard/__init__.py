"""The admin dashboard (``/admin``) and the end-user demo page (``/demo``)."""

from errand_api.dashboard.router import router

__all__ = ["router"]
