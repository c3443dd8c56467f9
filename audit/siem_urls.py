from django.urls import path

from . import siem_views

app_name = "siem"
urlpatterns = [
    path("", siem_views.sinks, name="sinks"),
]
