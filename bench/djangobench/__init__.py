"""The Django project bench/compare.py serves with every Python server (issue 17): Django's
default middleware, one template view, no database."""
