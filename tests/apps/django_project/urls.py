from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("item/<int:pk>/", views.item),
    path("form/", views.form),
    path("upload/", views.upload),
    path("cookie/set/", views.cookie_set),
    path("cookie/get/", views.cookie_get),
    path("stream/", views.stream),
]
