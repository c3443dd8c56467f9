from django.urls import path

from . import views

app_name = "approvals"
urlpatterns = [
    path("", views.queue, name="queue"),
    path("history/", views.history, name="history"),
    path("<int:pk>/row/", views.row, name="row"),
    path("<int:pk>/decide/", views.decide, name="decide"),
    path("policy/<slug:slug>/", views.policy, name="policy"),
]
