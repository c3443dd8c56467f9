from django.urls import path

from . import api

app_name = "audit-api"
urlpatterns = [
    path("", api.record_list, name="list"),
    path("export.csv", api.export_csv, name="export-csv"),
    path("export.jsonl", api.export_jsonl, name="export-jsonl"),
    path("<int:seq>/", api.record_detail, name="detail"),
]
