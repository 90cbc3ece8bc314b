"""A minimal Django project (test-only dependency) served by pyfpm as `django_project.wsgi:application`."""
