from django.shortcuts import render

from .page import ITEMS, TITLE


def page(request):
    """A small template with a loop and a few variables; nothing read from a database."""
    total = sum(item["qty"] * item["price"] for item in ITEMS)
    return render(request, "page.html", {"title": TITLE, "items": ITEMS, "total": total,
                                         "method": request.method})
