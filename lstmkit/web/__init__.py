"""`lstmkit serve`: a JSON API over trained runs, and a page that shows what their gates and memory cells do."""

from lstmkit.web.app import Limits, create_app, serve

__all__ = ["Limits", "create_app", "serve"]
