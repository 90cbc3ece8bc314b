"""A CGI-style script: it prints its response, which pyfpm does not serve."""
print("Content-Type: text/plain")
print()
print("hello from a CGI script")
