from django.urls import path

from . import api

app_name = "approvals-api"
urlpatterns = [
    path("", api.approval_list, name="list"),
    path("<int:pk>", api.approval_detail, name="detail"),
    path("<int:pk>/approve", api.approve, name="approve"),
    path("<int:pk>/deny", api.deny, name="deny"),
]
