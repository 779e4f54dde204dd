"""The prediction server: ``uvicorn app.main:app``, the app ``app.api.server`` builds from the environment."""

from app.api.server import create_app
from app.settings import get_settings

app = create_app(get_settings())
