"""The data the Django bench page renders, without importing Django: bench/compare.py checks
each server's answer against it (one <li> per item, the title)."""

TITLE = "pyfpm bench: an order"
ITEMS = tuple({"name": f"item number {i}", "qty": i % 4 + 1, "price": 3.5 * i + 0.25}
              for i in range(1, 21))
