"""Everything the project needs in one module: no database, no apps, no CSRF (tests post forms)."""

SECRET_KEY = "pyfpm-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_project.urls"
INSTALLED_APPS = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {}
USE_TZ = True
# Uploads above 64 KiB go to a temporary file, so both upload handlers are exercised.
FILE_UPLOAD_MAX_MEMORY_SIZE = 65536
DATA_UPLOAD_MAX_MEMORY_SIZE = 20 * 1024 * 1024
