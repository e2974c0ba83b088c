"""Settings of the Django recipe: the PQLSDK block is all pqlsdk reads."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "recipe-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["pqlapp.apps.PqlConfig"]
ROOT_URLCONF = "pqlsite.urls"
WSGI_APPLICATION = "pqlsite.wsgi.application"
DATABASES: dict = {}
USE_TZ = True

PQLSDK = {
    "DATABASE": os.environ.get("PQL_DB", "pql.db"),
    "RULES": os.environ.get("PQL_RULES", str(BASE_DIR.parent / "recipe_rules.toml")),
    # callbacks by dotted name: the name is also their identity in the outbox
    "ON_QUALIFIED": ["pqlapp.callbacks.notify_sales"],
    "SEGMENT_WRITE_KEY": os.environ.get("SEGMENT_WRITE_KEY"),
    "SEGMENT_HOST": os.environ.get("SEGMENT_HOST"),
}
