from django.urls import path

from . import api

app_name = "masking-api"
urlpatterns = [
    path("", api.RuleListView.as_view(), name="list"),
    path("<int:pk>", api.RuleDetailView.as_view(), name="detail"),
]
