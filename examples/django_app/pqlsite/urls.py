"""URLs of the Django recipe."""

from django.urls import path
from pqlapp import views

urlpatterns = [
    path("track", views.track),
    path("ping", views.ping),
    path("health", views.health),
]
