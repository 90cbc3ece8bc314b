"""One route for every path: the servers split SCRIPT_NAME and PATH_INFO differently behind
nginx's stock fastcgi_params (pyfpm: the whole path in PATH_INFO; uWSGI: all of it in
SCRIPT_NAME), and the page is the same for all of them."""

from django.urls import re_path

from . import views

urlpatterns = [re_path(r"", views.page)]
