from django.urls import path

from agents import views

app_name = "agents"

urlpatterns = [path("actions/", views.actions_page, name="actions")]
